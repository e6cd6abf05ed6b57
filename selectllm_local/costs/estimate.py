"""``selectllm experiment CONFIG --dry-run``: what a whole experiment will cost, before it runs.

The experiment file is loaded and checked like a real run (pool, test set, methods, budgets,
recipe), except that model folders need not be here; no model is loaded and nothing is written.
Each stage's work is counted from the file and the pool, then turned into time two ways:

* **this CPU**: rates measured on this machine with SmolLM2-135M (``benchmarks/bench_costs.py``,
  ``--rates``), scaled by model size: rate x measured non-embedding params / params. Compute
  scales with parameters, so the scaling is first-order only (memory, threads and the engine's
  overheads do not scale with it);
* **one GPU** (``--gpu``, default H100): datasheet figures, *an estimate, not measured*, except
  for the stages a ``--gpu-rates`` file measured on a GPU node (marked ``*``; scaled by model
  size like the CPU rates). Prefill,
  scoring and training are compute-bound: FLOPs / (dense bf16 peak x ``--utilization``), with
  2 x params FLOPs per token forward and 6 x params per training token. Decode is bandwidth-bound:
  each engine step reads every weight once (bf16), steps = ceil(sequences / batch) x tokens.

Work per stage (``runs`` = how often the stage runs):

* selection: the pool's round-one prompts (``bench.dry.round_one``: the real prompt builder,
  every row shown once, K per prompt), x the later tournament rounds (bound), x the selector's
  passes (logprob mode: ``permutations``, 0 = all K shifts). One selection per (select method,
  budget, selection seed); cluster-random and kcenter only reuse its plan;
* answer-/instruction-perplexity baselines: the base model answers every pool row (128 tokens
  at most) and scores prompt + answer, or scores the instruction alone; once per cell;
* fine-tune: budget x mean tokens per example (prompt + response, capped at ``max_length``; the
  longest or shortest rows for ``length``) x epochs (an upper bound with early stopping);
* evaluation: test rows x (prompt prefill + ``max_new_tokens`` x the measured answer fill).

Token counts use the model's tokenizer when its folder is here, else 4 characters per token.
A model folder that is not here is sized from a known shape in its name (``qwen2.5-7b``) or the
size in its name (``Mistral-7B-v0.1`` -> 7e9 parameters). Not counted: planning (embedding,
k-means), model loading and engine start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selectllm_local.costs.rates import (
    CPU_LABEL,
    GPU_LABEL,
    GPU_MEASURED_LABEL,
    Costs,
    load_gpu_rates,
    load_rates,
    model_size,
)
from selectllm_local.costs.stages import (
    Work,
    counter,
    evaluation_stage,
    finetune_stage,
    ifd_stages,
    nll_stages,
    perplexity_stages,
    prompt_k,
    selection_stages,
)


def estimate_experiment(
    config: Path | str,
    *,
    rates: Path | str | None = None,
    gpu: str = "h100",
    utilization: float = 0.4,
    pool: Path | str | None = None,
    gpu_rates: Path | str | None = None,
) -> dict[str, Any]:
    """Estimated seconds per stage and in total for the experiment file ``config``."""
    from selectllm_local.experiment.config import load_experiment_config
    from selectllm_local.experiment.inputs import load_inputs

    measured, rates_from = load_rates(rates)  # a bad rates file fails before the pool is read
    gpu_measured, gpu_rates_from = load_gpu_rates(gpu_rates)
    cfg = load_experiment_config(Path(config), require_models=False, pool=pool)
    data = load_inputs(cfg)
    base = model_size(cfg.base_model)
    w = Work(cfg, data, Costs(measured, gpu, utilization, gpu_measured), base,
             counter(base.tokenizer))  # fmt: skip
    ks = {b: prompt_k(cfg, len(data.pool_items), b) for b in cfg.budgets}
    selectors = [m for m in cfg.methods if m.partition(":")[0] == "select"]
    sel_size = model_size(str(cfg.engine.model)) if selectors else None
    stages = [
        *selection_stages(w, selectors, sel_size, ks),
        *perplexity_stages(w),
        *ifd_stages(w),
        finetune_stage(w),
        evaluation_stage(w),
        *nll_stages(w),
    ]
    models = {"base_model": base}
    if sel_size is not None:
        models["selector"] = sel_size
    c = w.c
    return {
        "experiment": cfg.name,
        "config": str(cfg.path),
        "pool": str(cfg.pool),
        "pool_rows": len(data.pool_items),
        "test_rows": len(data.test_rows),
        "test_rows_removed": {"total": data.test_overlap, **data.test_removed},
        "candidates_per_prompt": ks,
        "methods": cfg.methods,
        "budgets": cfg.budgets,
        "seeds": cfg.seeds,
        "method_seeds": cfg.experiment.method_seeds,
        "cells": w.cells,
        "models": {role: _model_info(m) for role, m in models.items()},
        "cpu": {"label": CPU_LABEL, "rates": rates_from or None},
        "gpu": {
            "label": GPU_LABEL,
            "key": gpu,
            "device": c.spec.name,
            "utilization": utilization,
            "bf16_dense_tflops": c.spec.bf16_dense_tflops,
            "memory_bandwidth_gbs": c.spec.memory_bandwidth_gbs,
            "measured": (
                {"label": GPU_MEASURED_LABEL, "rates": gpu_rates_from, **c.gpu_rates}
                if gpu_measured
                else None
            ),
        },  # fmt: skip
        "stages": [vars(s) for s in stages],
        "total_cpu_seconds": sum(s.cpu_seconds or 0 for s in stages) if measured else None,
        "total_gpu_seconds": sum(s.gpu_seconds for s in stages),
        "not_counted": "planning (embedding, k-means), model loading, engine start-up",
    }


def _model_info(m: Any) -> dict[str, Any]:
    return {
        "model": m.spec,
        "non_embedding_params": m.non_embedding_params,
        "total_params": m.total_params,
        "size_from": m.source,
        "tokens_counted_with": m.tokenizer or "heuristic (4 characters per token)",
    }
