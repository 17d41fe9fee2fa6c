"""The museum: language models from before the transformer, in NumPy with hand-written gradients.

    ngram.py NgramLM Chen & Goodman 1998: interpolated modified Kneser-Ney counts, no gradients
    mlp.py   MLPLM   Bengio et al. 2003: embeddings of the previous n tokens, tanh layer, softmax
    rnn.py   RNNLM   Elman 1990: a tanh recurrence, backpropagation through time by hand
    lstm.py  LSTMLM  Hochreiter & Schmidhuber 1997 with the forget gate of Gers et al. 2000

Each implements the LanguageModel interface (vintagelm/architectures.py) on FlatParamsModel
(vintagelm/flat_model.py), its parameters in one flat buffer as the GPT's, so the optimizers,
clipping, checkpoints and generation work unchanged. recurrent.py holds what rnn.py and
lstm.py share (the embedding, head, carried state and decoding state).
None of them is registered in architectures.ARCHITECTURES here.
"""
