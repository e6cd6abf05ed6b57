"""Getting a model: the packaged registry and cache, GGUF conversion, random-weight models."""
