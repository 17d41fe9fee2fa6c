"""The museum: language models from before the transformer, in NumPy with hand-written gradients.

    mlp.py   MLPLM   Bengio et al. 2003: embeddings of the previous n tokens, tanh layer, softmax
    rnn.py   RNNLM   Elman 1990: a tanh recurrence, backpropagation through time by hand
    lstm.py  LSTMLM  Hochreiter & Schmidhuber 1997 with the forget gate of Gers et al. 2000

Each implements the LanguageModel interface (vintagelm/architectures.py) with its parameters in one
flat buffer, so the optimizers, clipping, checkpoints and generation work unchanged.
common.py holds what they share (config checks, the flat buffer, the recurrent plumbing).
None of them is registered in architectures.ARCHITECTURES here.
"""
