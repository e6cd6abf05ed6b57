"""Embedding the pool with the packaged sentence encoder, on one process or on Ray."""
