"""Stage 6 of ``select``: the LLM's answers, resumed from ``responses.jsonl``, and what they cost.

Why apart from ``pipeline``: the pipeline file reads as its stage calls; the bookkeeping of the
selection stage (the resume key, moving answers of another configuration aside, loading the
engine only when a prompt needs it, the engine's counters before and after, the summary) lives
here. The selection itself (rounds, retries, picks) is ``selection.rounds``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from selectllm_local.backends.base import Backend
from selectllm_local.errors import UserError
from selectllm_local.records import SubsetResult
from selectllm_local.run.preflight import Ready
from selectllm_local.run.rundir import (
    engine_usage,
    model_identity,
    selected_rows,
    write_extra_format,
)
from selectllm_local.run.store import (
    AppendLog,
    RunStore,
    read_json,
    read_jsonl,
    stable_hash,
    write_json,
    write_jsonl,
)
from selectllm_local.summaries import SelectFiles, SelectionCounts, SelectSeconds, SelectSummary

if TYPE_CHECKING:
    from selectllm_local.config import SelectConfig
    from selectllm_local.run.pipeline import PlanOutcome
    from selectllm_local.selection.picks import SelectionOutcome
    from selectllm_local.selection.prompts import PromptTemplate

log = logging.getLogger("selectllm_local.run.pipeline")

Key = tuple[int, int]


class SelectionInterrupted(UserError):
    """Ctrl-C during ``select``: finished subsets are saved; the same command resumes."""

    exit_code = 130


def template_of(cfg: SelectConfig) -> PromptTemplate:
    from selectllm_local.selection import prompts as prompting

    s = cfg.selector
    return prompting.PromptTemplate.load(s.prompt, s.criteria, s.reasons)


def select_key(cfg: SelectConfig, store: RunStore, template_fp: str, backend_name: str) -> str:
    """What the answers depend on: a run with another key starts its answers afresh."""
    settings, engine = cfg.selector, cfg.engine
    return stable_hash(
        {
            "subsets": store.stage_info("subsets").get("key"),
            "model": model_identity(engine.model),
            "backend": backend_name,
            "dtype": engine.dtype,
            "max_model_len": engine.max_model_len,
            "template": template_fp,
            "settings": {
                k: str(v) for k, v in settings.__dict__.items() if k not in ("prompt", "criteria")
            },
            "budget": cfg.plan.budget,
        }
    )


def resume(store: RunStore, key: str) -> dict[Key, SubsetResult]:
    """The finished subsets of ``responses.jsonl``; answers of another key are moved aside."""
    responses = store.path("responses.jsonl")
    rows = read_jsonl(responses)
    if rows and any(r.get("key") != key for r in rows):
        old = store.path(f"responses.{rows[0].get('key', 'old')}.jsonl")
        os.replace(responses, old)
        log.info("configuration changed: earlier answers moved to %s, starting afresh", old.name)
        rows = []
    return {
        (r["round"], r["subset_id"]): SubsetResult.from_dict(
            {k: v for k, v in r.items() if k != "key"}
        )
        for r in rows
    }


@dataclass
class Answers:
    """The selection's outcome and the engine's part in it (for the summary)."""

    outcome: SelectionOutcome
    backend_name: str
    engine: Backend | None  # the loaded engine, or None when no prompt needed one
    delta: dict[str, Any]  # the engine's counters over this run
    startup: float  # seconds spent starting the engine (0 for one handed in)


def ask(
    cfg: SelectConfig,
    store: RunStore,
    planned: PlanOutcome,
    key: str,
    done: dict[Key, SubsetResult],
    *,
    backend: Backend | None,
    ready: Ready,
    progress: bool,
) -> Answers:
    """Send the unfinished subsets to the LLM, appending each answer as it finishes."""
    from selectllm_local.backends import LazyBackend
    from selectllm_local.selection import rounds as selection
    from selectllm_local.testhooks import hold_after

    lazy = LazyBackend(lambda: _load(cfg, store, ready, progress)) if backend is None else None
    engine: Backend = backend if backend is not None else lazy  # type: ignore[assignment]
    stats_before = dict(backend.stats) if backend is not None else {}
    responses = store.path("responses.jsonl")
    try:
        with AppendLog(responses) as log_file:
            hold = hold_after("subsets")  # a test's stop point (testhooks); a no-op otherwise

            def record(r: SubsetResult) -> None:
                log_file.append({"key": key, **r.to_dict()})
                hold()

            outcome = selection.select(
                planned.plan, planned.items, engine, cfg=cfg.selector, done=done,
                on_result=record, progress=progress,
            )  # fmt: skip
    except KeyboardInterrupt:
        raise SelectionInterrupted(
            f"Interrupted: {len(read_jsonl(responses))} finished subsets are saved in "
            f"{responses}. Run the same command again to resume; only unfinished subsets will "
            "be sent to the LLM."
        ) from None
    finally:
        if lazy is not None:
            lazy.close()
    real = backend if backend is not None else lazy.loaded if lazy is not None else None
    stats = dict(real.stats) if real is not None else {}
    delta = {k: stats.get(k, 0) - stats_before.get(k, 0) for k in stats if k != "startup_seconds"}
    startup = 0.0 if backend is not None else float(stats.get("startup_seconds", 0.0))
    return Answers(outcome, ready.backend, real, delta, startup)


def _load(cfg: SelectConfig, store: RunStore, ready: Ready, progress: bool) -> Backend:
    """Start the engine (on the first prompt that needs it), its output into engine.log."""
    from selectllm_local.backends import load_backend
    from selectllm_local.backends.startup import ENGINE_LOG, engine_log
    from selectllm_local.progress import status

    if not ready.model:
        raise UserError(
            "select needs --model (a local model folder) to ask the LLM; only a budget equal "
            "to the pool needs none."
        )
    eng = cfg.engine
    with (
        status(f"starting the {ready.backend} engine", enabled=progress),
        engine_log(store.path(ENGINE_LOG)),  # the engine's start-up output (quiet)
    ):
        # under Ray each actor resolves the model on its own node (the head's cache path
        # means nothing there)
        model = str(eng.model) if eng.ray and eng.model else ready.model
        return load_backend(ready.backend, model, eng, offline=cfg.plan.offline)


def write_selection(
    cfg: SelectConfig, store: RunStore, planned: PlanOutcome, outcome: SelectionOutcome
) -> SelectFiles:
    """``selected.jsonl`` (and ``--format``'s file): the files of the summary."""
    rows = selected_rows(planned.items, planned.plan, outcome)
    write_jsonl(store.path("selected.jsonl"), rows)
    extra = write_extra_format(cfg.format, rows, store)
    return SelectFiles(
        selected=str(store.path("selected.jsonl")),
        responses=str(store.path("responses.jsonl")),
        extra={cfg.format: extra} if extra else {},
    )


def summarize(
    cfg: SelectConfig,
    store: RunStore,
    planned: PlanOutcome,
    run: Answers,
    files: SelectFiles,
    seconds: dict[str, float],
    *,
    total: float,
) -> SelectSummary:
    from selectllm_local.review.compare import run_position_bias

    settings, outcome, n = cfg.selector, run.outcome, len(planned.items)
    counts = SelectionCounts.from_dict(outcome.counts)
    return SelectSummary(
        run_dir=str(store.root),
        pool=n,
        budget=cfg.plan.budget,
        selected=len(outcome.selected),
        model=cfg.engine.model,
        backend=run.backend_name if run.engine is not None else "none (no LLM call needed)",
        mode=settings.mode,
        reasons=settings.reasons,
        llm_called=outcome.llm_called,
        note=(
            "budget equals the pool: every instruction is selected, no LLM call was made"
            if cfg.plan.budget >= n
            else None
        ),
        rounds=outcome.rounds,
        kmeans_device=planned.kmeans_device,
        counts=counts,
        position_bias=run_position_bias(
            store.root, mode=settings.mode, permutations=settings.permutations
        ),
        **engine_usage(run.delta, counts.prompts_sent_this_run),
        seconds=SelectSeconds(
            planning={k: round(v, 3) for k, v in planned.seconds.items()},
            model_load=round(run.startup, 3),
            select=round(seconds["select"] - run.startup, 3),
            engine=round(float(run.delta.get("engine_seconds", 0.0)), 3),
            write=round(seconds["write"], 3),
            total=round(total, 3),
        ),
        files=files,
        ray=run.engine.ray_summary() if run.engine is not None else None,
    )


def save_config(cfg: SelectConfig, store: RunStore, key: str) -> None:
    """``config.json`` gains the select section beside the plan's."""
    path = store.path("config.json")
    conf = read_json(path) if path.exists() else {}
    conf["select"] = {
        **cfg.to_dict(),
        "model_identity": model_identity(cfg.engine.model),
        "key": key,
    }
    write_json(path, conf)
