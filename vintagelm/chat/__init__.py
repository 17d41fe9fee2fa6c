"""Chat: conversations as data, their tokens and loss mask (format.py). Fine-tuning, the
terminal chat and the server build on it."""
