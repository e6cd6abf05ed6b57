"""Likelihood signals of a small model: the IFD score of each pool row (Superfiltering).

Why: a 135M-270M model does not judge well when prompted to choose (no published work shows a
model under 1B beating random that way), but it ranks data well through its likelihoods.
Superfiltering (Li et al., ACL 2024) scores each (instruction, response) pair with GPT-2 by the
Instruction-Following Difficulty

    IFD = PPL(response | prompt) / PPL(response)

where each perplexity is exp of the mean negative log-likelihood over the response tokens only.
A high IFD means the instruction helps the model little to produce the answer (hard,
informative); IFD >= 1 means the instruction does not help at all, and such rows are dropped as
noise. It needs responses, so it serves annotated pools.

As in the reference code: the prompt is ``"{instruction}\\n{input}\\n"`` (``"{instruction}\\n"``
without an input; no chat template), the response follows it directly, texts start with the
tokenizer's own leading tokens (a BOS where the model uses one, nothing for GPT-2 or SmolLM2),
and a text without a BOS has no prediction for its first token, so the response alone is then
scored from its second token. Texts are cut to ``max_length`` tokens (1,024, the reference's);
where the prompt and response do not fit, the response keeps at least half the window (its start)
and the prompt is cut at its end; both perplexities score the same cut response. Prompt and
response are tokenized separately, so both texts hold exactly the same response tokens.

Scoring runs on the selection engine (``Backend.token_logprobs``: vLLM prompt logprobs or one
transformers forward pass), two prefills per row. Scores go to an append-only file
(``ifd_scores.jsonl``: one line per row, flushed per batch, keyed by the model and a hash of the
row's text), so a killed run resumes where it stopped and an experiment scores each row once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selectllm_local.backends.base import Backend
from selectllm_local.baselines.request import Request
from selectllm_local.errors import UserError
from selectllm_local.records import Plan, PoolItem
from selectllm_local.run.store import AppendLog, file_hash, read_jsonl, stable_hash

log = logging.getLogger(__name__)

IFD_FILE = "ifd_scores.jsonl"
DEFAULT_MAX_LENGTH = 1024  # tokens per text, as the reference code
CHUNK_ROWS = 64  # rows per backend call: the unit that is persisted (and lost, at most, on a kill)
TEMPLATE = "superfiltering-none-v1"  # changes the cache key if the prompt layout ever changes


def ifd_prompt(item: PoolItem) -> str:
    """The reference code's plain prompt: the instruction, the input if any, one newline each."""
    if item.input:
        return f"{item.instruction}\n{item.input}\n"
    return f"{item.instruction}\n"


def has_response(item: PoolItem) -> bool:
    return bool(item.output and item.output.strip())


def require_responses(items: Sequence[PoolItem], method: str) -> None:
    """Refuse a pool without responses: IFD is a property of an (instruction, response) pair."""
    if not any(has_response(it) for it in items):
        raise UserError(
            f"Baseline '{method}' needs responses: it scores how much each instruction helps the "
            f"model produce its response (IFD), and none of the {len(items)} pool rows has one. "
            "Use a pool with a response field (map it with --output-field), or a method that "
            "needs no responses (select, random, instruction-perplexity, kcenter)."
        )


@dataclass(frozen=True)
class Windows:
    """The two texts of one row as token ids, with the index of their first scored token."""

    cond: list[int]
    cond_start: int
    alone: list[int]
    alone_start: int


def ifd_windows(tokenizer: Any, prompt: str, response: str, max_length: int) -> Windows | None:
    """Token windows of one row (module docstring), or None when nothing can be scored."""
    lead = list(tokenizer("")["input_ids"])  # the tokenizer's own leading tokens (BOS)
    p = list(tokenizer.encode(prompt, add_special_tokens=False))
    r = list(tokenizer.encode(response, add_special_tokens=False))
    room = max_length - len(lead)
    if len(p) + len(r) > room:
        keep = min(len(p), max(room - len(r), room // 2))
        p, r = p[:keep], r[: room - keep]
    alone_start = max(1, len(lead))
    if not p and not lead:  # no context at all for the first response token
        return None
    if len(lead) + len(r) <= alone_start:  # the response alone has no scored token
        return None
    return Windows(lead + p + r, len(lead) + len(p), lead + r, alone_start)


def model_key(
    model_path: str, dtype: str, max_length: int, max_model_len: int | None, *, backend: str
) -> str:
    """What the scores depend on besides the text: the model (path and config), the engine that
    runs it (vLLM and transformers agree to about 1e-3, enough to reorder near-ties), the dtype,
    the window and the prompt layout. Known before any engine starts, so a run whose rows are
    all cached starts none."""
    path = Path(model_path)
    config = path / "config.json"
    return stable_hash(
        {
            "model": str(path),
            "backend": backend,
            "config": file_hash(config) if config.is_file() else None,
            "dtype": dtype,
            "max_length": max_length,
            "max_model_len": max_model_len,
            "template": TEMPLATE,
        }
    )


def row_key(prompt: str, response: str) -> str:
    return stable_hash([prompt, response])


class ScoreLog:
    """``ifd_scores.jsonl``: one line per scored row, ``{"model", "row", "cond", "alone", "n"}``
    (mean NLLs and response tokens); lines of other models are kept and ignored."""

    def __init__(self, path: Path, model: str) -> None:
        self.path, self.model = Path(path), model

    def load(self) -> dict[str, tuple[float, float]]:
        out: dict[str, tuple[float, float]] = {}
        for row in read_jsonl(self.path):  # a torn last line is not read (AppendLog cuts it)
            if row.get("model") == self.model:
                out[row["row"]] = (float(row["cond"]), float(row["alone"]))
        return out

    def writer(self) -> AppendLog:
        return AppendLog(self.path)


@dataclass
class IFDScores:
    """Per pool row: IFD and its two mean NLLs (NaN where the row has no scorable response);
    ``summaries.IfdSummary.of`` is what a baseline's summary reports of them."""

    ifd: np.ndarray
    cond_nll: np.ndarray
    alone_nll: np.ndarray
    scored_now: int
    cached: int
    seconds: float
    model: str = ""


def ifd_scores(
    items: Sequence[PoolItem],
    backend: Backend,
    *,
    key: str,
    cache_path: Path,
    max_length: int = DEFAULT_MAX_LENGTH,
    chunk_rows: int = CHUNK_ROWS,
    progress: bool = True,
) -> IFDScores:
    """IFD of every row on ``backend``, reusing and extending the score file ``cache_path``
    (lines of model ``key``, see :func:`model_key`). ``backend`` is touched only when some row
    is not cached yet (a ``LazyBackend`` then starts no engine for a fully cached pool)."""
    from selectllm_local.progress import progress_bar

    t0 = time.perf_counter()
    log_ = ScoreLog(cache_path, key)
    known = log_.load()
    n = len(items)
    cond, alone = np.full(n, np.nan), np.full(n, np.nan)
    missing: list[tuple[int, str, str, str]] = []
    for i, it in enumerate(items):
        if not has_response(it):
            continue
        prompt, response = ifd_prompt(it), str(it.output)
        rk = row_key(prompt, response)
        if rk in known:
            cond[i], alone[i] = known[rk]
        else:
            missing.append((i, rk, prompt, response))
    cached = int(np.isfinite(cond).sum())
    todo: list[tuple[int, str, Windows]] = []
    if missing:
        length = min(max_length, int(backend.max_context) - 1)  # room for the generated token
        for i, rk, prompt, response in missing:
            win = ifd_windows(backend.tokenizer, prompt, response, length)
            if win is not None:
                todo.append((i, rk, win))
    if todo:
        log.info("IFD: scoring %d rows (%d from %s)", len(todo), cached, cache_path)
        with (
            log_.writer() as out,
            progress_bar("IFD scores", total=len(todo), enabled=progress) as advance,
        ):
            for c in range(0, len(todo), chunk_rows):
                chunk = todo[c : c + chunk_rows]
                seqs = [w.cond for _, _, w in chunk] + [w.alone for _, _, w in chunk]
                starts = [w.cond_start for _, _, w in chunk] + [w.alone_start for _, _, w in chunk]
                values = backend.token_logprobs(seqs, starts)
                for j, (i, rk, _w) in enumerate(chunk):
                    cond[i] = -float(np.mean(values[j]))
                    alone[i] = -float(np.mean(values[len(chunk) + j]))
                    out.append(
                        {
                            "model": log_.model,
                            "row": rk,
                            "cond": cond[i],
                            "alone": alone[i],
                            "n": len(values[len(chunk) + j]),
                        }
                    )
                advance(len(chunk))
    ifd = np.exp(cond - alone)  # PPL ratio = exp(difference of the mean NLLs); NaN stays NaN
    return IFDScores(ifd, cond, alone, len(todo), cached, time.perf_counter() - t0)


def preference(ifd: np.ndarray) -> np.ndarray:
    """One order for both IFD selectors (higher is preferred): rows with IFD < 1 by IFD, highest
    first; then the rows the filter drops (IFD >= 1), closest to 1 first, only where fewer than
    the budget pass the filter; rows without a score last."""
    pref = np.where(ifd < 1, ifd, -ifd)
    return np.where(np.isfinite(ifd), pref, -math.inf)


def ifd_pick(ifd: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """``ifd``: the ``budget`` most preferred rows (``preference``); ties by a seeded key."""
    pref = preference(ifd)
    order = np.lexsort((rng.random(len(pref)), -pref))
    passing = int((ifd < 1).sum())
    if passing < budget:
        log.warning(
            "ifd: only %d rows have IFD < 1 for a budget of %d; the other %d picks are rows with "
            "IFD >= 1 (closest to 1 first) or without a score",
            passing,
            budget,
            budget - passing,
        )
    return order[:budget]


def cluster_pick(plan: Plan, ifd: np.ndarray, rng: np.random.Generator, *, seed: int) -> list[int]:
    """``cluster-ifd``: the plan's subsets, each keeping its ``k`` most preferred candidates, in
    the rounds ``select`` runs (``subsets.next_round`` with the same seed) until exactly the
    budget remains: ``select`` with the IFD as the judge."""
    from selectllm_local.cluster import subsets as subsets_mod

    pref = preference(ifd)
    tiebreak = rng.random(len(pref))
    budget = plan.budget
    round_subsets = list(plan.subsets)
    rnd = round_subsets[0].round if round_subsets else 1
    while True:
        winners: list[int] = []
        for s in round_subsets:
            cands = np.asarray(s.candidates, dtype=np.int64)
            order = np.lexsort((tiebreak[cands], -pref[cands]))
            winners.extend(int(c) for c in cands[order[: min(s.k, len(cands))]])
        if len(winners) <= budget:
            return winners
        rnd += 1
        round_subsets = subsets_mod.next_round(
            winners, plan.labels, budget, rnd, subset_size=plan.n_clusters, seed=seed
        )
        if not round_subsets or not budget <= sum(s.k for s in round_subsets) < len(winners):
            raise RuntimeError(  # a bug, not a user error: every round must shrink to the budget
                f"cluster-ifd round {rnd}: next_round made no progress from {len(winners)} "
                f"winners towards budget {budget}"
            )


def _scores_of(req: Request) -> np.ndarray:
    if req.scores is None:
        raise UserError(
            f"Baseline '{req.name}' needs the IFD scores of the pool (run it through `selectllm "
            "baseline` or the experiment, which score the pool on the selection engine)."
        )
    return req.scores


def ifd_runner(req: Request) -> np.ndarray:
    """``ifd``: the highest-IFD rows (IFD >= 1 dropped)."""
    return ifd_pick(_scores_of(req), req.budget, req.rng)


def cluster_ifd_runner(req: Request) -> np.ndarray:
    """``cluster-ifd``: the plan's subsets with the IFD as the judge; topped up with the best of
    the rest when the plan's picks do not cover the budget."""
    scores = _scores_of(req)
    if req.plan is None:
        raise UserError(
            f"Baseline '{req.name}' needs the selection plan (run it through the pipeline)."
        )
    picks = cluster_pick(req.plan, scores, req.rng, seed=req.seed)
    if len(picks) < req.budget:
        chosen = set(picks)
        order = np.lexsort((req.rng.random(len(scores)), -preference(scores)))
        rest = [int(i) for i in order if int(i) not in chosen]
        picks.extend(rest[: req.budget - len(picks)])
    return np.array(picks[: req.budget])
