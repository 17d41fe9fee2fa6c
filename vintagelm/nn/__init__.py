"""Neural-network operations as pure forward/backward pairs on NumPy arrays.

Every op is two functions side by side:
    y, cache = op_forward(x, *params)            the cache is a NamedTuple of what backward needs
    dx = op_backward(dy, cache, *dparam_slots)   the gradient w.r.t. the input; an op with
                                                 parameters ADDS their gradients into the slots

Nothing here knows about models, files, text or training; the model (vintagelm/model.py)
wires the ops together, through the table in ops.py, and owns (and zeroes) the gradient slots.

Shape legend used in every docstring and comment:
    B batch size   T sequence length (time)   C channels (n_embd)
    H heads        D head size (C // H)       V vocabulary size   L layers
"""
