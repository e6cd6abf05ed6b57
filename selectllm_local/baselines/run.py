"""The run-directory entry point of the baselines (the CLI and the experiment call this): load
the pool (and plan) as ``select`` does, score IFD on the selection engine where needed, run the
baseline and write its selection beside ``select``'s."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from selectllm_local.backends.base import Backend
from selectllm_local.baselines.registry import (
    LIKELIHOOD_METHODS,
    NEEDS_EMBEDDINGS,
    NEEDS_PLAN,
    canonical_baseline,
    run_baseline,
)
from selectllm_local.baselines.request import Scorer
from selectllm_local.config import BaselineCommand, EngineConfig, PlanConfig
from selectllm_local.errors import UserError
from selectllm_local.records import PoolItem
from selectllm_local.run.rundir import item_record
from selectllm_local.summaries import BaselineSummary, IfdSummary

if TYPE_CHECKING:
    from selectllm_local.baselines.ifd import IFDScores


def baseline_command(
    cfg: BaselineCommand, *, progress: bool = True, flags: bool = True
) -> BaselineOutcome:
    """``selectllm baseline`` and the API's ``baseline`` in one: what the baseline needs is checked
    before the pool is embedded or scored (a writable run directory; the scorer model, fetched or
    converted; for IFD an engine model, named, its backend installed and the model here, except
    on Ray, whose workers load it), then ``baseline_run``. ``flags``: errors name command-line
    flags (``--model``), else the API's keyword arguments (``model``)."""
    from selectllm_local.baselines.registry import baseline_options
    from selectllm_local.config.base import flag_name
    from selectllm_local.run.preflight import check_writable, resolve_local_model

    def spelled(section: object, name: str) -> str:  # the flag, or the API's keyword
        return flag_name(type(section), name) if flags else name

    check_writable(cfg.plan.resolved_run_dir)
    scorer = cfg.baseline.scorer_model
    if scorer:
        scorer = resolve_local_model(
            scorer, flag=spelled(cfg.baseline, "scorer_model"), offline=cfg.plan.offline
        )
    model_flag = spelled(cfg.engine, "model")
    if cfg.name in LIKELIHOOD_METHODS:  # the selection engine scores the pool
        if not cfg.engine.model:  # (any engine needs a model: checked first)
            raise _no_engine_model(cfg.name, model_flag, spelled(cfg.engine, "backend"))
        if not cfg.engine.ray:
            from selectllm_local.backends import check_backend_installed, resolve_backend_name

            check_backend_installed(resolve_backend_name(cfg.engine.backend))
            cfg.engine.model = resolve_local_model(
                cfg.engine.model, flag=model_flag, offline=cfg.plan.offline
            )
    return baseline_run(
        cfg.name,
        cfg.plan,
        scorer=scorer,
        engine=cfg.engine,
        progress=progress,
        **baseline_options(cfg.baseline, cfg.name),
    )


def _no_engine_model(name: str, model: str = "--model", backend: str = "--backend") -> UserError:
    return UserError(
        f"Baseline '{name}' scores the pool with the selection engine's model: give {model} "
        "(a local model folder, a .gguf file or a known name such as smollm2-135m-instruct) "
        f"and optionally {backend}."
    )


@dataclass
class BaselineOutcome:
    """Where a baseline's selection was written, and what it chose."""

    name: str
    out_dir: Path
    indices: list[int]
    summary: BaselineSummary


def baseline_run(
    name: str,
    cfg: PlanConfig,
    *,
    scorer: str | Path | Scorer | None = None,
    engine: EngineConfig | None = None,
    backend: Backend | None = None,
    score_cache: Path | None = None,
    progress: bool = True,
    **opts: Any,
) -> BaselineOutcome:
    """Run baseline ``name`` on the pool of ``cfg`` (a ``PlanConfig``) and write its selection.

    Pool, embeddings and plan come from ``cfg.run_dir`` (computed there once and cached, exactly as
    ``select`` computes them, so ``cluster-random`` sees the subsets ``select`` sees).
    ``ifd`` and ``cluster-ifd`` score the pool on the selection engine: ``engine`` (an
    ``EngineConfig`` naming the model; started only if some row is not scored yet) or an engine
    already loaded (``backend``); the scores go to ``score_cache`` (default
    ``<run_dir>/ifd_scores.jsonl``), which an experiment shares between its cells. Output:
    ``<run_dir>/baselines/<name>-b<budget>-s<seed>/selected.jsonl`` (rows like ``select``'s: the
    original record plus a ``selectllm`` block) and ``summary.json``, both written atomically.
    """
    name = canonical_baseline(name)
    t0 = time.perf_counter()
    items, embeddings, plan = _inputs(name, cfg, progress)
    scores = likely = None
    if name in LIKELIHOOD_METHODS:
        likely = _ifd_scores(
            name, items, cfg, engine, backend, score_cache, progress, opts.get("max_length")
        )
        scores = likely.ifd
    picks = run_baseline(
        name,
        items,
        cfg.budget,
        seed=cfg.seed,
        embeddings=embeddings,
        plan=plan,
        scorer=scorer,
        scores=scores,
        progress=progress,
        **opts,
    )
    variant = (
        "-shortest" if opts.get("shortest") else (f"-{opts['band']}" if "band" in opts else "")
    )  # (band: only the perplexity baselines are given one)
    out = cfg.resolved_run_dir / "baselines" / f"{name}{variant}-b{cfg.budget}-s{cfg.seed}"
    rows = []
    for rank, idx in enumerate(picks, 1):
        cluster = int(plan.labels[idx]) if plan is not None else None
        extra = {} if scores is None else {"ifd": _finite(scores[idx])}
        rows.append(
            item_record(items[idx], idx, method=name + variant, rank=rank, cluster=cluster, **extra)
        )
    from selectllm_local.run.store import write_json, write_jsonl

    write_jsonl(out / "selected.jsonl", rows)
    summary = BaselineSummary(
        method=name + variant,
        pool=len(items),
        budget=cfg.budget,
        selected=len(picks),
        seed=cfg.seed,
        options={k: str(v) for k, v in opts.items()},
        scorer=str(scorer) if scorer is not None and not callable(scorer) else None,
        seconds=round(time.perf_counter() - t0, 3),
        files={"selected": str(out / "selected.jsonl")},
    )
    if likely is not None:
        summary.ifd = IfdSummary.of(likely)
        summary.scorer = likely.model
    write_json(out / "summary.json", summary.to_dict())
    return BaselineOutcome(name=name + variant, out_dir=out, indices=picks, summary=summary)


def _inputs(name: str, cfg: PlanConfig, progress: bool) -> tuple[Any, Any, Any]:
    """The pool, and the embeddings and plan where ``name`` needs them, as ``select`` has them."""
    from selectllm_local.run import pipeline
    from selectllm_local.run.store import RunStore

    if name in LIKELIHOOD_METHODS:  # before any planning: a pool without responses stops here
        from selectllm_local.baselines.ifd import require_responses

        pooled, _stats, _cached = pipeline.load_pool_stage(cfg, RunStore(cfg.resolved_run_dir))
        require_responses(pooled, name)
    if name in NEEDS_EMBEDDINGS or name in NEEDS_PLAN:
        planned = pipeline.plan_run(cfg, progress=progress)
        return planned.items, planned.embeddings, planned.plan
    items, _stats, _cached = pipeline.load_pool_stage(cfg, RunStore(cfg.resolved_run_dir))
    if cfg.budget > len(items):
        raise UserError(
            f"--budget {cfg.budget} is larger than the pool: {cfg.pool} has {len(items)} "
            f"usable instructions. Choose a budget of at most {len(items)}."
        )
    return items, None, None


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _ifd_scores(
    name: str,
    items: Sequence[PoolItem],
    cfg: PlanConfig,
    engine: EngineConfig | None,
    backend: Backend | None,
    score_cache: Path | None,
    progress: bool,
    max_length: int | None,
) -> IFDScores:
    """IFD of every pool row on the selection engine (``likelihood.ifd_scores``), cached."""
    from selectllm_local import hardware
    from selectllm_local.backends import (
        LazyBackend,
        load_backend,
        resolve_backend_name,
        resolve_model,
    )
    from selectllm_local.baselines import ifd as likelihood

    likelihood.require_responses(items, name)
    length = int(max_length or likelihood.DEFAULT_MAX_LENGTH)
    if backend is not None:  # an engine the caller loaded (options already resolved)
        opts = backend.options
        model, dtype = str(backend.model_path), str(opts.dtype)
    elif engine is None or not engine.model:
        raise _no_engine_model(name)
    else:
        opts = engine
        model = resolve_model(engine.model, offline=bool(cfg.offline))
        dtype = hardware.engine_dtype(engine.dtype, engine.device)
    kind = backend.name if backend is not None else resolve_backend_name(opts.backend)
    key = likelihood.model_key(model, dtype, length, opts.max_model_len, backend=kind)
    offline = bool(cfg.offline)
    own = LazyBackend(lambda: load_backend(kind, model, engine, offline=offline))
    try:
        result = likelihood.ifd_scores(
            items,
            backend if backend is not None else own,
            key=key,
            cache_path=score_cache or cfg.resolved_run_dir / likelihood.IFD_FILE,
            max_length=length,
            progress=progress,
        )
    finally:
        own.close()  # a no-op unless it was started here
    result.model = model
    return result
