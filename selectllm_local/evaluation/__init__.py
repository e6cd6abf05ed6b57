"""Evaluating a fine-tuned model: answers on a test set, Rouge-L, cosine, reference NLL."""
