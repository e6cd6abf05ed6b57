"""The ``diversity`` baseline: does textual novelty (lowest maximum Rouge-L overlap with a seeded
sample of the pool) do as well as the LLM's picks?"""

from __future__ import annotations

import re

import numpy as np

from selectllm_local.baselines.request import Request, top

DIVERSITY_SAMPLE = 500  # pool items each candidate is compared with (docs/EXPERIMENTS.md)
LCS_MAX_TOKENS = (
    64  # Rouge-L tokens kept per text: one 64-bit word per text in the bit-parallel LCS
)


def diversity_pick(req: Request) -> np.ndarray:
    texts = [f"{it.instruction} {it.input}".strip() for it in req.items]
    max_overlap = max_rouge_l_to_sample(
        texts, sample_size=int(req.opts.get("sample_size", DIVERSITY_SAMPLE)), seed=req.seed
    )
    return top(max_overlap, req.budget, req.rng)


_TOKEN_RE = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's default tokenisation: lowercase, non-alphanumerics become spaces."""
    return _TOKEN_RE.sub(" ", text.lower()).split()


def max_rouge_l_to_sample(texts: list[str], *, sample_size: int, seed: int) -> np.ndarray:
    """For each text, its highest Rouge-L F1 with a seeded sample of the other texts.

    A bit-parallel LCS (Allison-Dix / Hyyro) runs one text against the whole sample at once: each
    sample text is one uint64 word of position bits, so a token of the query costs five numpy ops
    over the sample. Texts are cut to their first ``LCS_MAX_TOKENS`` tokens.
    """
    n = len(texts)
    toks = [rouge_tokens(t)[:LCS_MAX_TOKENS] for t in texts]
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.permutation(n)[: min(sample_size, n)])
    s = len(sample)
    lens = np.array([len(toks[i]) for i in sample], dtype=np.float64)
    masks: dict[str, np.ndarray] = {}
    for col, i in enumerate(sample):
        for pos, tok in enumerate(toks[i]):
            arr = masks.get(tok)
            if arr is None:
                arr = masks[tok] = np.zeros(s, dtype=np.uint64)
            arr[col] |= np.uint64(1) << np.uint64(pos)
    full = np.array([(1 << int(m)) - 1 for m in lens], dtype=np.uint64)  # m bits set; m <= 64 fits
    col_of = {int(i): c for c, i in enumerate(sample)}
    best = np.zeros(n, dtype=np.float64)
    for i in range(n):
        q = toks[i]
        if not q:
            continue
        v = full.copy()
        for tok in q:
            m = masks.get(tok)
            if m is None:
                continue
            u = v & m
            v = (v + u) | (v - u)
        lcs = lens - np.bitwise_count(v & full)
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = np.where(lcs > 0, 2 * lcs / (lens + len(q)), 0.0)
        c = col_of.get(i)
        if c is not None:
            f1[c] = 0.0  # a text does not overlap "with the pool" through itself
        best[i] = f1.max() if s else 0.0
    return best
