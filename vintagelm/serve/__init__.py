"""`vintage serve`: a chat page and an OpenAI-compatible API over a trained model."""
