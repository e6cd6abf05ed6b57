"""Selections that are not the LLM: random, k-center, length, perplexity, IFD and their registry."""
