"""Generate mode of the selection: the LLM answers with the ids it picks, retried, then a fallback.

Every unfinished subset of a round goes to the backend in one batched call; each answer is
validated (``parsing``) and a finished subset is emitted at once. The first attempt is greedy
(``temperature``) and constrained to the ids grammar where the backend can; up to ``retries``
more are sampled at ``retry_temperature`` with seed ``seed + attempt``; a subset still without a
valid answer falls back (``picks.fallback_picks``), flagged ``fallback``. ``rounds.py`` states the
whole failure policy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from selectllm_local.config import SelectorConfig
from selectllm_local.records import Generation, Subset, SubsetResult
from selectllm_local.selection import parse as parsing
from selectllm_local.selection.gcpause import paused_gc
from selectllm_local.selection.picks import NO_ANSWER, NO_ANSWER_KIND, done_result, fallback_picks

if TYPE_CHECKING:
    from selectllm_local.selection.rounds import _Round

log = logging.getLogger("selectllm_local.selection.rounds")


def generate_round(
    pending: list[Subset], ctx: _Round, emit: Callable[[SubsetResult], None], progress: bool
) -> None:
    """Ask for every pending subset's picks (``ctx``: selection's ``_Round``): valid answers are
    emitted at once, invalid or missing ones asked again (``retries``), then fall back."""
    cfg, backend = ctx.cfg, ctx.backend
    parse = parsing.parse_reasons if cfg.reasons else parsing.parse_ids
    with paused_gc():  # our own CPU work, which makes no reference cycles (``gcpause``)
        ctx.prepare(pending)
        prompts = {s.id: ctx.render(s) for s in pending}
    state = {s.id: _fresh_state() for s in pending}
    todo = list(pending)
    for attempt in range(cfg.retries + 1):
        if not todo:
            break
        temperature = cfg.temperature if attempt == 0 else cfg.retry_temperature
        max_tokens = max(ctx.max_tokens(s) for s in todo)
        constraints = [ctx.constraint(s) for s in todo]
        failed: list[Subset] = []
        batch = list(todo)
        answered: set[int] = set()

        def on_output(
            i: int,
            gen: Generation,
            batch: list[Subset] = batch,
            attempt: int = attempt,
            failed: list[Subset] = failed,
            answered: set[int] = answered,
        ) -> None:
            s = batch[i]
            answered.add(s.id)
            st = state[s.id]
            st["raw"].append(gen.text)
            st["pt"] += gen.prompt_tokens
            st["ot"] += gen.output_tokens
            res = parse(gen.text, len(s.candidates), s.k)
            if res.ok:
                reasons = {s.candidates[p - 1]: r for p, r in res.reasons.items()}
                emit(done_result(s, res.ids, st, attempt + 1, False, reasons))
            else:
                st["errors"].append(res.error)
                st["kinds"].append(res.kind or "other")
                st["salvage"] = res.salvage
                failed.append(s)

        backend.generate(
            [prompts[s.id] for s in batch],
            max_tokens=max_tokens,
            temperature=temperature,
            seed=cfg.seed + attempt,
            constraints=constraints,
            progress=progress,
            on_output=on_output,
        )
        _count_unanswered(batch, answered, state, failed)
        if failed:
            log.info("attempt %d: %d of %d answers invalid", attempt + 1, len(failed), len(batch))
        todo = sorted(failed, key=lambda s: s.id)
    for s in todo:
        emit(_fallback_result(s, state[s.id], cfg))


def _fresh_state() -> dict[str, Any]:
    """What a subset's attempts gather: raw answers, errors and their kinds, token counts, the
    ids salvaged from the last answer, the start time."""
    return {
        "raw": [],
        "errors": [],
        "kinds": [],
        "pt": 0,
        "ot": 0,
        "salvage": [],
        "t0": time.perf_counter(),
    }


def _count_unanswered(
    batch: list[Subset],
    answered: set[int],
    state: dict[int, dict[str, Any]],
    failed: list[Subset],
) -> None:
    """A prompt the backend never answered counts as a failed attempt."""
    for s in batch:
        if s.id not in answered:
            state[s.id]["errors"].append(NO_ANSWER)
            state[s.id]["kinds"].append(NO_ANSWER_KIND)
            failed.append(s)


def _fallback_result(s: Subset, st: dict[str, Any], cfg: SelectorConfig) -> SubsetResult:
    """The documented fallback of a subset with no valid answer in every attempt."""
    positions = fallback_picks(s, st["salvage"], cfg.seed)
    log.warning(
        "subset %d (round %d): no valid answer in %d attempts (%s); fallback picks %s",
        s.id,
        s.round,
        cfg.retries + 1,
        "; ".join(st["errors"]),
        positions,
    )
    return done_result(s, positions, st, cfg.retries + 1, True, {})
