"""Thin CLI subcommands: parse arguments, call one library function, print the result."""
import argparse


def non_negative(text):
    """argparse type: an integer >= 0 (a seed, a count), with an error that says so."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def positive(text):
    """argparse type: an integer >= 1 (a count of workers, a size limit)."""
    value = non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
