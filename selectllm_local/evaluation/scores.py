"""The paper's two metrics of answers against reference answers, computed offline.

Rouge-L F1 of ``rouge-score`` (its default tokeniser, no stemming) and the cosine similarity of
all-MiniLM-L6-v2 sentence embeddings (the packaged copy, no hub); an empty answer scores cosine 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalised embeddings with the packaged all-MiniLM-L6-v2 (no download)."""
    from selectllm_local.embed.encoder import embed_texts

    return np.asarray(embed_texts(texts, batch_size=batch_size, progress=False), dtype=np.float32)


def score(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """Rouge-L F1 and embedding cosine of each prediction against its reference, and their means."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rouge = [
        scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)
    ]
    emb = _embed(list(predictions) + list(references))
    n = len(predictions)
    cosine = np.einsum("ij,ij->i", emb[:n], emb[n:]).astype(float)
    empty = np.array([not p.strip() for p in predictions])
    cosine[empty] = 0.0  # an empty answer shares nothing with the reference
    return {
        "n": n,
        "rougeL_f1": float(np.mean(rouge)) if n else 0.0,
        "cosine": float(np.mean(cosine)) if n else 0.0,
        "empty_predictions": int(empty.sum()),
        "per_example": {"rougeL_f1": [float(x) for x in rouge], "cosine": cosine.tolist()},
    }
