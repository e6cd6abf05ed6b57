"""Selection throughput against the physical limit of the machine.

Why the numbers look the way they do: a selection prompt shows K candidates (hundreds of tokens)
and the answer is a few identifiers. Reading the prompt (prefill) is a large matrix multiply per
layer over all prompt tokens at once, so it is compute-bound; writing the answer (decode) reads
every weight once per generated token, so it is bandwidth-bound, but with ids-only answers there
are only a handful of such steps. Selection is therefore prefill-bound and its ceiling is the
machine's matmul rate: prefill utilisation = 2 x non-embedding parameters x prompt tokens /
seconds / peak FLOP/s, where the peak is measured in this process (``bench.peak``).

What is measured, per setting (backend, batch, prefix caching, constrained or free decoding,
generative / reasons / logprob mode): engine start-up (once per engine), then for each repeat a
full ``selection.select`` over a fresh workload, split into time inside the engine
(``backend.stats['engine_seconds']``) and time in our code (prompt rendering, token counting,
parsing). Workloads are real pool rows rendered by the real prompt builder; the subset layout is a
cheap deterministic stand-in for the planning stages (candidate j of subset p is row p + j x S of
the slice, like "the p-th member of every cluster" when clusters are contiguous blocks): token
counts and compute are those of a real plan, without paying for embeddings and k-means. Each
repeat uses a different slice of the pool, so prefix caching reuses only what a real run reuses
(the shared system block), never a whole prompt from the previous repeat. Models are random-weight
models of real shapes (``tinymodel``), which cost exactly what the trained models cost.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selectllm_local.backends.base import Backend
from selectllm_local.bench.config import (
    RESULT_KEYS,
    SCHEMA,
    BenchConfig,
    BenchSetting,
    resolve_settings,
)
from selectllm_local.bench.model import model_shape, prepare_model
from selectllm_local.bench.peak import Peak, add_utilization
from selectllm_local.bench.tokenstore import TOKEN_STORE, fresh_token_store
from selectllm_local.config.vocab import Dtype
from selectllm_local.errors import UserError
from selectllm_local.records import Plan, PoolItem, Subset

if TYPE_CHECKING:
    from selectllm_local.config import SelectorConfig
    from selectllm_local.hardware import PeakMemory

log = logging.getLogger(__name__)


# -- workload --------------------------------------------------------------------------------------
def load_items(pool: Path | str | None, need: int) -> list[PoolItem]:
    """The pool's rows (through ``data.load_pool``), at least ``need`` of them (wrapping if short)."""
    from selectllm_local.data import pool as data

    if pool is None:
        raise UserError("The benchmark needs a pool file: pass --pool (e.g. Dolly or Alpaca).")
    items, _ = data.load_pool(pool)
    if not items:
        raise UserError(f"Pool {pool} has no usable instructions.")
    if len(items) < need:
        log.warning(
            "pool has %d rows, the benchmark asks for %d: rows are reused (within one engine the "
            "prefix cache may then serve prompts seen before)",
            len(items),
            need,
        )
    return [items[i % len(items)] for i in range(max(need, len(items)))]


def strided_plan(n_subsets: int, k_candidates: int, picks: int) -> Plan:
    """Subset p holds rows p, p + S, p + 2S, ... (S = n_subsets): every row shown exactly once."""
    subsets = [
        Subset(
            id=p,
            candidates=[p + j * n_subsets for j in range(k_candidates)],
            k=picks,
            clusters=list(range(k_candidates)),
        )
        for p in range(n_subsets)
    ]
    labels = [i // n_subsets for i in range(n_subsets * k_candidates)]
    return Plan(k_candidates, labels, "strided", n_subsets * picks, subsets, rounds_expected=1)


def workload(
    items: Sequence[PoolItem], index: int, cfg: BenchConfig, n_subsets: int | None = None
) -> tuple[Plan, list[PoolItem]]:
    """Workload number ``index``: its own slice of the pool, re-indexed 0..n-1."""
    size = cfg.subsets * cfg.candidates
    n_subsets = n_subsets or cfg.subsets
    part = items[index * size : index * size + n_subsets * cfg.candidates]
    return strided_plan(n_subsets, cfg.candidates, cfg.picks), [
        dataclasses.replace(it, index=i) for i, it in enumerate(part)
    ]


def selection_settings(setting: BenchSetting, cfg: BenchConfig) -> SelectorConfig:
    """Selection settings for one benchmark setting: no retries (one call per subset, always)."""
    from selectllm_local.config import SelectorConfig

    max_tokens = None if (setting.reasons or setting.mode == "logprobs") else cfg.max_tokens
    return SelectorConfig(
        mode=setting.mode,
        reasons=setting.reasons,
        max_candidate_tokens=cfg.max_candidate_tokens,
        min_candidate_tokens=min(32, cfg.max_candidate_tokens),
        constrained=setting.constrained,
        retries=0,
        max_tokens=max_tokens,
        seed=cfg.seed,
    )


def render_seconds(
    plan: Plan, items: Sequence[PoolItem], backend: Backend, sel: SelectorConfig
) -> float:
    """Time to build every prompt of a workload with the real prompt builder (no engine)."""
    from selectllm_local.selection import prompts as prompting

    t0 = time.perf_counter()
    template = prompting.PromptTemplate.load(sel.prompt, sel.criteria, reasons=sel.reasons)
    special = list(backend.special_tokens)
    for s in plan.subsets:
        labels = prompting.LETTER_LABELS[: len(s.candidates)] if sel.mode == "logprobs" else None
        messages = prompting.render_messages(
            template, s, items, max_candidate_tokens=sel.max_candidate_tokens,
            count_tokens=backend.count_tokens, labels=labels,
            mode="logprobs" if sel.mode == "logprobs" else "ids", special_tokens=special,
        )  # fmt: skip
        backend.count_tokens(backend.render_chat(messages))
    return time.perf_counter() - t0


# -- measurement -----------------------------------------------------------------------------------
def _open_backend(setting: BenchSetting, model: str, cfg: BenchConfig, dtype: Dtype) -> Backend:
    from selectllm_local.backends import load_backend
    from selectllm_local.config import EngineConfig

    opts = EngineConfig(
        dtype=dtype,
        max_model_len=cfg.max_model_len,
        seed=cfg.seed,
        enable_prefix_caching=setting.prefix_caching,
        max_num_seqs=setting.batch if setting.backend == "vllm" else None,
        batch_size=setting.batch,  # None: 16 on CPU, sized from free memory on CUDA
    )
    return load_backend(setting.backend, model, opts)


_COUNTERS = (
    "engine_seconds",
    "prompt_tokens",
    "output_tokens",
    "padding_tokens",
    "cached_prompt_tokens",
)


def measure_setting(
    setting: BenchSetting,
    backend: Backend,
    items: Sequence[PoolItem],
    cfg: BenchConfig,
    first_slice: int = 0,
) -> dict[str, Any]:
    """Warm-up, then ``repeats`` selections on fresh slices; medians of the timed repeats.

    Slices ``first_slice ..`` are used: settings sharing an engine must not share slices, or the
    prefix cache would serve whole prompts measured by the setting before.
    """
    from selectllm_local.selection import rounds as selection

    sel = selection_settings(setting, cfg)
    runs: list[dict[str, Any]] = []
    render_s: list[float] = []
    for r in range(cfg.warmup + cfg.repeats):
        plan, part = workload(
            items,
            first_slice + r,
            cfg,
            min(cfg.subsets, cfg.warmup_subsets) if r < cfg.warmup else None,
        )
        if r >= cfg.warmup:
            render_s.append(render_seconds(plan, part, backend, sel))
        before = {k: float(backend.stats.get(k, 0)) for k in _COUNTERS}
        t0 = time.perf_counter()
        out = selection.select(plan, part, backend, cfg=sel, progress=False)
        total = time.perf_counter() - t0
        if len(out.selected) != plan.budget:  # the selection engine's own guarantee, re-checked
            raise RuntimeError(f"{setting.label}: {len(out.selected)} picks, budget {plan.budget}")
        if r < cfg.warmup:
            continue
        d = {k: float(backend.stats.get(k, 0)) - before[k] for k in _COUNTERS}
        fallbacks = sum(1 for res in out.results.values() if res.fallback)
        runs.append(
            {"select_seconds": total, "prompts": len(plan.subsets), "fallbacks": fallbacks, **d}
        )
    med = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
    engine, prompt_tokens = med["engine_seconds"], med["prompt_tokens"]
    padded = med["prompt_tokens"] + med["padding_tokens"]
    return {
        "prompts": int(med["prompts"]),
        "prompt_tokens": int(prompt_tokens),
        "cached_prompt_tokens": int(med["cached_prompt_tokens"]),
        "output_tokens": int(med["output_tokens"]),
        "padding_tokens": int(med["padding_tokens"]),
        "padding_fraction": med["padding_tokens"] / padded if padded else 0.0,
        "engine_seconds": engine,
        "render_seconds": statistics.median(render_s),
        "select_seconds": med["select_seconds"],
        "ours_seconds": med["select_seconds"] - engine,
        "seconds_all": [round(run["engine_seconds"], 4) for run in runs],
        "prompts_per_s": med["prompts"] / engine,
        "prompt_tokens_per_s": prompt_tokens / engine,
        "output_tokens_per_s": med["output_tokens"] / engine,
        "pipeline_prompt_tokens_per_s": prompt_tokens / med["select_seconds"],
        "fallbacks": int(med["fallbacks"]),
        "valid_first_try": int(med["prompts"] - med["fallbacks"]),
    }


def _measure_one(
    s: BenchSetting,
    eng: Backend,
    items: Sequence[PoolItem],
    cfg: BenchConfig,
    base: int,
    startup: float,
    peak: Peak,
    mem: PeakMemory,
) -> dict[str, Any]:
    """One setting's row: the matmul peak re-sampled first, then the timed selection rounds."""
    log.info("measuring %s", s.label)
    peak.sample()
    row = {"label": s.label, **dataclasses.asdict(s), "startup_seconds": startup}
    with fresh_token_store():  # cold, whatever ran before (``bench.tokenstore``)
        row.update(measure_setting(s, eng, items, cfg, base))
    mem.read()
    row["peak_rss_bytes"], row["peak_gpu_bytes"] = mem.rss_peak_bytes, mem.gpu_peak_bytes
    return row


def rows_needed(cfg: BenchConfig) -> int:
    """Pool rows the benchmark reads: its own slice per setting and repeat (warm-ups included)."""
    return len(cfg.settings) * (cfg.warmup + cfg.repeats) * cfg.subsets * cfg.candidates


@dataclass
class _Target:
    """What is measured: the model (path and architecture) and the settings run on it."""

    model: str
    shape: dict[str, Any]
    settings: list[BenchSetting]
    device: str
    dtype: Dtype


def _target(cfg: BenchConfig, items: Sequence[PoolItem], backend: Backend | None) -> _Target:
    """The model to measure (``backend``'s, or the configured one, built if needed)."""
    from selectllm_local import hardware

    device = hardware.default_device()
    dtype = hardware.resolve_dtype(cfg.dtype, device)
    if backend is not None:
        model, shape = backend.model_path, model_shape(backend.model_path)
        settings = [s for s in cfg.settings if s.backend == backend.name]
    else:
        model, shape = prepare_model(cfg, items)
        settings = list(cfg.settings)
    if not settings:
        raise UserError("No benchmark setting matches the given backend.")
    return _Target(model, shape, settings, device, dtype)


def _measure_engines(
    cfg: BenchConfig,
    target: _Target,
    items: Sequence[PoolItem],
    peak: Peak,
    backend: Backend | None,
    progress: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Settings sharing an engine run on one start of it, each on its own slices of ``items``;
    the first engine also runs the ``--stages`` select. Returns (rows, stages)."""
    from selectllm_local import hardware
    from selectllm_local.progress import progress_bar

    per_setting = cfg.warmup + cfg.repeats
    rows: list[dict[str, Any]] = []
    stages: dict[str, Any] | None = None
    groups: dict[tuple[str, int | None, bool], list[BenchSetting]] = {}
    for s in target.settings:
        groups.setdefault(s.engine_key, []).append(s)
    bar = progress_bar("benchmark settings", total=len(target.settings), enabled=progress)
    with bar as advance:
        for group in groups.values():
            with hardware.PeakMemory(target.device) as mem:
                eng = (
                    _open_backend(group[0], target.model, cfg, target.dtype)
                    if backend is None
                    else backend
                )
                startup = float(eng.stats.get("startup_seconds", 0.0))
                try:
                    for s in group:
                        base = group.index(s) * per_setting
                        rows.append(_measure_one(s, eng, items, cfg, base, startup, peak, mem))
                        advance(1)
                    if cfg.stages and stages is None:
                        from selectllm_local.bench.stages import select_stages

                        with fresh_token_store():
                            stages = select_stages(cfg, items, eng)
                finally:
                    if backend is None:
                        eng.close()
    return rows, stages


def run_benchmark(
    cfg: BenchConfig, *, backend: Backend | None = None, progress: bool = False
) -> dict[str, Any]:
    """Measure every setting of ``cfg``; returns the JSON document (see ``RESULT_KEYS``).

    ``backend``: an already loaded engine to measure instead of starting one per setting (tests
    pass the session's shared vLLM engine); only settings of that backend are measured then.
    """
    from selectllm_local.models import random_weights as tinymodel

    cfg = resolve_settings(cfg)
    items = load_items(cfg.pool, rows_needed(cfg))
    target = _target(cfg, items, backend)
    n_params = tinymodel.non_embedding_params(target.shape)
    peak = Peak(target.device, target.dtype)
    log.info("matmul peak (%s, %s): %.1f GFLOP/s", target.dtype, target.device,
             peak.sample().best_flops / 1e9)  # fmt: skip
    rows, stages = _measure_engines(cfg, target, items, peak, backend, progress)
    peak.sample()
    peak_block = peak.block()
    add_utilization(rows, n_params, peak_block["flops"], peak_block["datasheet_flops"])
    return {
        "schema": SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": cfg.machine,
        "environment": {**bench_environment(cfg.machine), "token_store": TOKEN_STORE},
        "model": {
            "path": target.model,
            "shape": cfg.shape if not cfg.model and backend is None else None,
            "non_embedding_params": n_params, "dtype": target.dtype,
            "architecture": target.shape,
            "random_weights": (Path(target.model) / "selectllm_model.json").is_file(),
        },
        "workload": {
            "pool": str(cfg.pool), "layout": "strided", "subsets": cfg.subsets,
            "candidates": cfg.candidates, "picks": cfg.picks,
            "max_candidate_tokens": cfg.max_candidate_tokens, "max_tokens": cfg.max_tokens,
            "warmup": cfg.warmup, "repeats": cfg.repeats,
        },
        "peak": peak_block,
        "results": [{k: row.get(k) for k in RESULT_KEYS} for row in rows],
        "stages": stages,
    }  # fmt: skip


def bench_environment(machine: str | None = None) -> dict[str, Any]:
    """Versions and machine facts for the JSON's environment block."""
    import os

    from selectllm_local import hardware
    from selectllm_local.run.rundir import environment

    env = environment()
    facts = hardware.machine_facts()
    datasheet = facts.pop("gpu_datasheet", None)
    env.update(
        machine=machine or "",
        **facts,
        vllm_cpu_kvcache_space=os.environ.get("VLLM_CPU_KVCACHE_SPACE"),
    )
    if facts["gpu_name"] is not None:
        env["gpu_datasheet"] = datasheet
    return env
