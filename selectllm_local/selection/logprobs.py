"""Logprob mode of the selection: candidates ranked by the label log-probability, no generation.

Reads the label log-probabilities at the answer position (one forward pass per prompt), keeps
every candidate's score, and picks the top ``k`` (near-ties within ``picks.TIE_TOLERANCE`` of the
cut broken by a seeded hash of the candidates' content ids, so batching cannot decide). Labels are letters checked to be single tokens;
a subset larger than the label set is split into near-equal chunks scored separately, each chunk's
scores normalised over its own labels (log-softmax), then merged. ``permutations > 1`` scores
cyclic shifts of the candidate order and averages, which cancels a preference for early or late
positions; ``permutations = 0`` scores every shift (each candidate shown once at each position,
the full correction, at one prompt per candidate). Jobs are counted as they are built (linear in their number). A prompt the backend
never answers is sent again (``retries``); a subset still unscored falls back like an invalid
answer in generate mode, flagged ``fallback`` with ``no answer`` errors.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from selectllm_local.records import Subset, SubsetResult
from selectllm_local.selection.gcpause import paused_gc
from selectllm_local.selection.picks import (
    NO_ANSWER,
    NO_ANSWER_KIND,
    fallback_picks,
    result_of,
    tie_key,
    top_k_tied,
)

log = logging.getLogger("selectllm_local.selection.rounds")


def logprob_round(
    pending: list[Subset], ctx: Any, emit: Callable[[SubsetResult], None], progress: bool
) -> None:
    """Score every pending subset's candidates by label log-probability (``ctx``: selection's
    ``_Round``); unanswered prompts are retried, then fall back (``picks.fallback_picks``)."""
    assert ctx.labels is not None
    jobs, expected, job_ids = _plan_jobs(pending, len(ctx.labels), ctx.cfg.permutations)
    with paused_gc():  # our CPU work (``gcpause``)
        ctx.prepare(pending)
        prompts, labels, sizes = _render_jobs(jobs, ctx)
    scores_by_job: dict[int, list[float]] = {}
    tries = {s.id: 0 for s in pending}
    t0 = time.perf_counter()
    by_id = {s.id: s for s in pending}

    def finish(s: Subset) -> None:
        shown = [(jobs[j][1], scores_by_job[j], sizes[j]) for j in job_ids[s.id]]
        emit(_scored_result(s, ctx, shown, tries[s.id], expected[s.id], t0))

    seen: Counter[int] = Counter()
    todo = list(range(len(jobs)))
    for _attempt in range(ctx.cfg.retries + 1):
        if not todo:
            break
        batch = list(todo)
        for j in batch:
            tries[jobs[j][0].id] += 1

        def on_output(i: int, scores: list[float], batch: list[int] = batch) -> None:
            j = batch[i]
            s = jobs[j][0]
            scores_by_job[j] = _log_softmax(scores)
            seen[s.id] += 1
            if seen[s.id] == expected[s.id]:
                finish(s)

        ctx.backend.score_labels(
            [prompts[j] for j in batch],
            [labels[j] for j in batch],
            progress=progress,
            on_output=on_output,
        )
        todo = [j for j in batch if j not in scores_by_job]
        if todo:
            log.info("%d of %d label-scoring prompts got no answer", len(todo), len(batch))
    for sid in sorted({jobs[j][0].id for j in todo}):  # never answered: documented fallback
        emit(_unscored_result(by_id[sid], ctx.cfg.seed, ctx.cfg.retries + 1))


def _plan_jobs(
    pending: list[Subset], n_labels: int, perms: int
) -> tuple[list[tuple[Subset, list[int]]], dict[int, int], dict[int, list[int]]]:
    """The scoring jobs of a round: (subset, display positions shown, 0-based) per prompt, each
    subset cut into chunks of at most ``n_labels`` and shown in ``perms`` cyclic shifts (0: every
    shift); also the number of jobs per subset and each subset's job numbers."""
    jobs: list[tuple[Subset, list[int]]] = []
    expected: dict[int, int] = {}  # counted while appending: linear in the number of jobs
    job_ids: dict[int, list[int]] = {s.id: [] for s in pending}
    for s in pending:
        n = len(s.candidates)
        n_chunks = math.ceil(n / n_labels)
        bounds = [round(j * n / n_chunks) for j in range(n_chunks + 1)]
        for a, b in zip(bounds, bounds[1:], strict=False):
            chunk = list(range(a, b))
            shifts = min(perms, len(chunk)) if perms else len(chunk)  # 0: every shift
            for p in range(shifts):
                shift = (p * len(chunk)) // shifts
                job_ids[s.id].append(len(jobs))
                jobs.append((s, chunk[shift:] + chunk[:shift]))
                expected[s.id] = expected.get(s.id, 0) + 1
    return jobs, expected, job_ids


def _render_jobs(
    jobs: list[tuple[Subset, list[int]]], ctx: Any
) -> tuple[list[str], list[list[str]], list[int]]:
    """Each job's prompt (its candidates in the order shown), labels and prompt size."""
    prompts, labels, sizes = [], [], []
    for s, order in jobs:
        shown = Subset(
            s.id, [s.candidates[i] for i in order], s.k, [s.clusters[i] for i in order], s.round
        )
        prompt, size = ctx.render_sized(shown, ctx.labels[: len(order)])
        prompts.append(prompt)
        sizes.append(size)
        labels.append(ctx.labels[: len(order)])
    return prompts, labels, sizes


def _log_softmax(scores: list[float]) -> list[float]:
    """The label scores normalised over the labels shown."""
    norm = max(scores)
    logz = norm + math.log(math.fsum(math.exp(x - norm) for x in scores))
    return [sc - logz for sc in scores]


def _scored_result(
    s: Subset,
    ctx: Any,
    shown: list[tuple[list[int], list[float], int]],
    tries: int,
    expected: int,
    t0: float,
) -> SubsetResult:
    """A subset's result from its jobs' (positions shown, scores, prompt size): scores averaged
    per candidate, the top ``k`` picked (near-ties by the seeded tie rule)."""
    sums: list[list[float]] = [[] for _ in s.candidates]
    ptoks = 0
    for order, scores, size in shown:
        for pos, sc in zip(order, scores, strict=True):
            sums[pos].append(sc)
        ptoks += size
    avg = [math.fsum(v) / len(v) for v in sums]  # order-free: shifts tie exactly
    keys = [tie_key(ctx.cfg.seed, ctx.items[i].uid) for i in s.candidates]
    top = top_k_tied(avg, s.k, keys)
    if top.tie_rule:
        log.debug("subset %d: margin %.2g, decided by the tie rule", s.id, top.margin)
    return result_of(
        s,
        [j + 1 for j in top.chosen],
        raw=[],
        attempts=tries,
        fallback=False,
        errors=[NO_ANSWER] * (tries - expected),
        error_kinds=[NO_ANSWER_KIND] * (tries - expected),
        prompt_tokens=ptoks,
        output_tokens=expected,
        seconds=round(time.perf_counter() - t0, 4),
        scores=[round(x, 6) for x in avg],
        margin=None if top.margin is None else round(top.margin, 9),
        tie_rule=top.tie_rule,
    )


def _unscored_result(s: Subset, seed: int, attempts: int) -> SubsetResult:
    """The documented fallback of a subset the backend never scored in ``attempts`` tries."""
    positions = fallback_picks(s, [], seed)
    log.warning(
        "subset %d (round %d): the backend never scored it in %d attempts; fallback picks %s",
        s.id,
        s.round,
        attempts,
        positions,
    )
    return result_of(
        s,
        positions,
        raw=[],
        attempts=attempts,
        fallback=True,
        errors=[NO_ANSWER] * attempts,
        error_kinds=[NO_ANSWER_KIND] * attempts,
    )
