"""What the lab tests share: every number of a results.json, with where it sits."""


def numbers(value, where="results"):
    """Every (place, number) in a JSON structure, None included."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from numbers(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from numbers(v, f"{where}[{i}]")
    elif value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        yield where, value
