"""Neural-network operations as pure forward/backward pairs on NumPy arrays.

Every op is two functions side by side:
    y, cache = op_forward(x, *params)         the cache is a NamedTuple of what backward needs
    dx, *dparams = op_backward(dy, cache)      gradients of the loss w.r.t. the inputs

Nothing here knows about models, files, text or training; the model (vintagelm/model.py)
wires the ops together and owns the gradient buffers.

Shape legend used in every docstring and comment:
    B batch size   T sequence length (time)   C channels (n_embd)
    H heads        D head size (C // H)       V vocabulary size   L layers
"""
