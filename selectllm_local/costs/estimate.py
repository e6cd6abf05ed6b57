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

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selectllm_local.config.training import EVALUATE_BATCH_SIZE
from selectllm_local.costs.rates import (
    CPU_LABEL,
    GPU_LABEL,
    GPU_MEASURED_LABEL,
    Costs,
    load_gpu_rates,
    load_rates,
    model_size,
)

if TYPE_CHECKING:
    from selectllm_local.experiment.config import ExperimentConfig
    from selectllm_local.experiment.inputs import ExperimentInputs
    from selectllm_local.records import PoolItem

VLLM_MAX_SEQS = 256  # vLLM's default max_num_seqs: sequences decoded per engine step


@dataclass
class Stage:
    name: str
    runs: int
    detail: str
    cpu_seconds: float | None
    gpu_seconds: float
    tokens: float = 0.0  # all runs: prompt tokens (selection, scoring) or trained/generated tokens
    gpu_measured: bool = False  # gpu_seconds scaled from --gpu-rates, not the datasheet


def _k(cfg: Any, n: int, budget: int) -> int:
    """Candidates per prompt of a cell's plan: [plan] n_clusters, else the pipeline's rule."""
    from selectllm_local.config import PlanConfig
    from selectllm_local.run.pipeline import default_k

    plan = PlanConfig(pool=cfg.pool, budget=budget, **cfg.plan)
    return int(plan.n_clusters or default_k(n, budget, max_k=plan.max_k))


def _counter(tokenizer: str | None) -> Any:
    from selectllm_local.selection.prompttokens import token_counter

    return token_counter(tokenizer)[0]


@dataclass
class Work:
    """What every stage's estimate reads: the file, its data, the rates, the base model."""

    cfg: ExperimentConfig
    data: ExperimentInputs
    c: Costs
    base: Any  # rates.ModelSize of the base model
    count_base: Any  # its token counter

    @property
    def items(self) -> list[PoolItem]:
        return self.data.pool_items

    def cells_of(self, method: str) -> int:
        return len(self.cfg.budgets) * len(self.cfg.seeds_of(method))

    @property
    def cells(self) -> int:
        return sum(self.cells_of(m) for m in self.cfg.methods)


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
             _counter(base.tokenizer))  # fmt: skip
    ks = {b: _k(cfg, len(data.pool_items), b) for b in cfg.budgets}
    selectors = [m for m in cfg.methods if m.partition(":")[0] == "select"]
    sel_size = model_size(str(cfg.engine.model)) if selectors else None
    stages = [
        *_selection_stages(w, selectors, sel_size, ks),
        *_perplexity_stages(w),
        *_ifd_stages(w),
        _finetune_stage(w),
        _evaluation_stage(w),
        *_nll_stages(w),
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


def _selection_stages(
    w: Work, selectors: list[str], sel_size: Any, ks: dict[int, int]
) -> list[Stage]:
    """One selection per (select method, budget, selection seed)."""
    from selectllm_local.bench.dry import budget_terms, round_one

    cfg, c, n = w.cfg, w.c, len(w.items)
    stages: list[Stage] = []
    counted: dict[int, Any] = {}  # round one's tokens depend on K only
    backend = str(cfg.engine.backend)
    seqs = (cfg.engine.batch_size or 8) if backend == "transformers" else VLLM_MAX_SEQS
    for method in selectors:
        assert sel_size is not None
        seeds = 1 if cfg.selection_seed is not None else len(cfg.seeds_of(method))
        sel = cfg.selector_for(method)
        logprobs = sel.mode == "logprobs"
        key = "selection_transformers_prompt_tokens_per_s" if backend == "transformers" else (
            "selection_vllm_logprobs_prompt_tokens_per_s" if logprobs
            else "selection_vllm_prompt_tokens_per_s"
        )  # fmt: skip
        for budget in cfg.budgets:
            k = ks[budget]
            if k not in counted:
                counted[k] = round_one(
                    w.items, candidates=k, budget=budget, tokenizer=sel_size.tokenizer,
                    max_candidate_tokens=cfg.selector.max_candidate_tokens,
                )  # fmt: skip
            passes = (sel.permutations or k) if logprobs else 1
            terms = budget_terms(n, k, budget)
            tokens = counted[k].tokens * terms.rounds_factor * passes
            prompts = len(counted[k].per_prompt) * terms.rounds_factor * passes
            steps = 0.0 if logprobs else math.ceil(prompts / seqs) * terms.answer_tokens
            cpu = c.cpu(key, tokens, sel_size.non_embedding_params)
            gpu_m = None
            if backend == "transformers":  # measured on the node's transformers backend
                gpu_m = c.gpu_measured(key, tokens, sel_size.non_embedding_params)
            gpu_s = c.compute(2 * sel_size.non_embedding_params * tokens)
            gpu_s += c.decode(steps, sel_size.total_params)
            stages.append(Stage(
                f"selection {method} b{budget}", seeds,
                f"{prompts:,.0f} prompts, {tokens:,.0f} tokens ({passes} pass"
                f"{'es' if passes > 1 else ''}, K={k})",
                None if cpu is None else cpu * seeds, (gpu_m or gpu_s) * seeds, tokens * seeds,
                gpu_measured=gpu_m is not None,
            ))  # fmt: skip
    return stages


def _perplexity_stages(w: Work) -> list[Stage]:
    """Answer-/instruction-perplexity baselines: every pool row, once per cell."""
    from selectllm_local.baselines.perplexity import ANSWER_TOKENS
    from selectllm_local.training.trainset import render_prompt

    cfg, c, items, n = w.cfg, w.c, w.items, len(w.items)
    ppl = [m for m in cfg.methods if m.partition(":")[0].endswith("perplexity")]
    if not ppl:
        return []
    stages: list[Stage] = []
    scorer = model_size(str(cfg.baseline.scorer_model))
    count = _counter(scorer.tokenizer)
    prompt_tok = sum(min(256, count(render_prompt(it.instruction, it.input))) for it in items)
    instr_tok = sum(count(it.instruction) for it in items)
    batch = cfg.baseline.scorer_batch_size
    for method in ppl:
        if method.startswith("answer-perplexity"):
            answer_tok = n * ANSWER_TOKENS * c.fill
            scored = prompt_tok * 2 + answer_tok  # prefill to answer, then prompt + answer
            cpu = c.cpu("evaluate_output_tokens_per_s", answer_tok, scorer.non_embedding_params)
            cpu2 = c.cpu(  # the generation rate includes its prefill; scoring is a forward pass
                "selection_transformers_prompt_tokens_per_s", prompt_tok + answer_tok,
                scorer.non_embedding_params,
            )  # fmt: skip
            cpu = None if cpu is None or cpu2 is None else cpu + cpu2
            steps = math.ceil(n / batch) * ANSWER_TOKENS
            gpu_s = c.compute(2 * scorer.non_embedding_params * scored)
            gpu_s += c.decode(steps, scorer.total_params)
            detail = f"{n:,} answers of <= {ANSWER_TOKENS} tokens, then scored"
        else:
            cpu = c.cpu(
                "selection_transformers_prompt_tokens_per_s", instr_tok,
                scorer.non_embedding_params,
            )  # fmt: skip
            gpu_s = c.compute(2 * scorer.non_embedding_params * instr_tok)
            scored = instr_tok
            detail = f"{instr_tok:,} instruction tokens scored"
        cells = w.cells_of(method)
        stages.append(Stage(
            f"baseline {method}", cells, detail,
            None if cpu is None else cpu * cells, gpu_s * cells, scored * cells,
        ))  # fmt: skip
    return stages


def _ifd_stages(w: Work) -> list[Stage]:
    """IFD (ifd, cluster-ifd): every pool row once per experiment, two prefills."""
    cfg, c, items = w.cfg, w.c, w.items
    if not any(m.partition(":")[0] in ("ifd", "cluster-ifd") for m in cfg.methods):
        return []
    from selectllm_local.baselines.ifd import ifd_prompt

    scorer = model_size(str(cfg.engine.model))
    count = _counter(scorer.tokenizer)
    cap = cfg.baseline.ifd_max_length
    scored = sum(
        min(cap, count(ifd_prompt(it)) + count(it.output or "")) + min(cap, count(it.output or ""))
        for it in items
    )
    key = "selection_transformers_prompt_tokens_per_s" if cfg.engine.backend == "transformers" else (
        "selection_vllm_logprobs_prompt_tokens_per_s"
    )  # fmt: skip
    cpu = c.cpu(key, scored, scorer.non_embedding_params)
    gpu_s = c.compute(2 * scorer.non_embedding_params * scored)
    return [Stage(
        "IFD scores (ifd, cluster-ifd)", 1, f"{len(items):,} rows, {scored:,.0f} tokens, scored once",
        cpu, gpu_s, scored,
    )]  # fmt: skip


def _finetune_stage(w: Work) -> Stage:
    """Every cell trains on its picks: budget x mean tokens per example x epochs."""
    from selectllm_local.training.trainset import render_prompt

    cfg, c, base, ft = w.cfg, w.c, w.base, w.cfg.finetune
    per_row = sorted(
        min(
            ft.max_length,
            w.count_base(render_prompt(it.instruction, it.input) + (it.output or "")) + 1,
        )
        for it in w.items
    )
    mean_all = sum(per_row) / len(per_row)
    ft_cpu, ft_gpu, ft_tokens = 0.0, 0.0, 0.0
    for method in cfg.methods:
        seeds = len(cfg.seeds_of(method))
        for budget in cfg.budgets:
            name, _, variant = method.partition(":")
            if name == "length":
                short = variant == "shortest" or (not variant and cfg.baseline.shortest)
                rows = per_row[:budget] if short else per_row[-budget:]
                mean = sum(rows) / len(rows)
            else:
                mean = mean_all
            if ft.max_steps > 0:  # max_steps overrides epochs (and holds out no time for val)
                train, val = ft.max_steps * ft.batch_size * ft.grad_accum * mean, 0.0
            else:
                train = budget * (1 - ft.val_fraction) * mean * float(ft.epochs)
                val = budget * ft.val_fraction * mean * float(ft.epochs)
            ft_tokens += (train + val) * seeds
            cpu = c.cpu("finetune_tokens_per_s", train + val / 3, base.non_embedding_params)
            ft_cpu += (cpu or 0.0) * seeds
            flops = 6 * base.non_embedding_params * train + 2 * base.non_embedding_params * val
            measured_s = c.gpu_measured(
                "finetune_tokens_per_s", train + val / 3, base.non_embedding_params
            )
            ft_gpu += (measured_s if measured_s is not None else c.compute(flops)) * seeds
    bound = "up to " if ft.early_stopping_patience else ""
    span = f"{ft.max_steps} steps" if ft.max_steps > 0 else f"{bound}{ft.epochs:g} epochs"
    return Stage(
        "fine-tune", w.cells, f"{ft_tokens:,.0f} tokens ({span}, mean {mean_all:.0f} per example)",
        ft_cpu if c.rates else None, ft_gpu, ft_tokens,
        gpu_measured="finetune_tokens_per_s" in c.gpu_rates,
    )  # fmt: skip


def _evaluation_stage(w: Work) -> Stage:
    """Every cell answers the test rows: prompt prefill + max_new_tokens x the answer fill."""
    c, base, ev, cells = w.c, w.base, w.cfg.evaluate, w.cells
    tests = w.data.test_examples
    prompt_tok = sum(min(ev.max_prompt_tokens, w.count_base(t.prompt)) for t in tests)
    out_tok = len(tests) * ev.max_new_tokens * c.fill
    cpu = c.cpu("evaluate_output_tokens_per_s", out_tok, base.non_embedding_params)
    backend, batch_size = ev.engine.backend, ev.engine.batch_size or EVALUATE_BATCH_SIZE
    batch = VLLM_MAX_SEQS if backend in ("vllm", "auto") else batch_size
    gpu_s = c.compute(2 * base.non_embedding_params * prompt_tok)
    gpu_s += c.decode(math.ceil(len(tests) / batch) * ev.max_new_tokens, base.total_params)
    gpu_m = None
    if backend == "transformers":  # the node's measurement is of the transformers backend
        gpu_m = c.gpu_answers(len(tests), batch, ev.max_new_tokens, base.non_embedding_params)
    return Stage(
        "evaluation", cells,
        f"{len(tests):,} answers of <= {ev.max_new_tokens} tokens (fill {c.fill:.0%})",
        None if cpu is None else cpu * cells, (gpu_m or gpu_s) * cells,
        (prompt_tok + out_tok) * cells, gpu_measured=gpu_m is not None,
    )  # fmt: skip


def _nll_stages(w: Work) -> list[Stage]:
    """One teacher-forced forward pass per reference: a prefill, no decode."""
    c, base, ev, cells = w.c, w.base, w.cfg.evaluate, w.cells
    if not w.data.nll_rows:
        return []
    refs = [w.data.all_test_examples[r] for r in w.data.nll_rows]
    nll_tok = sum(
        min(ev.max_prompt_tokens, w.count_base(t.prompt))
        + min(ev.nll_max_tokens, w.count_base(t.reference) + 1)
        for t in refs
    )
    # A teacher-forced pass is a prefill with no decode: the measured NLL rate where the rates
    # file has one, else the measured prefill rate of logprob selection (also no decode). The
    # transformers selection rate would be wrong here: it includes generating the answer.
    nll_rate = (
        "reference_nll_tokens_per_s"
        if c.rates and "reference_nll_tokens_per_s" in c.rates
        else "selection_vllm_logprobs_prompt_tokens_per_s"
    )
    cpu = c.cpu(nll_rate, nll_tok, base.non_embedding_params)
    return [Stage(
        "reference NLL", cells,
        f"{len(refs):,} references, one forward pass each ({nll_tok / len(refs):.0f} tokens)",
        None if cpu is None else cpu * cells,
        c.compute(2 * base.non_embedding_params * nll_tok) * cells, nll_tok * cells,
    )]  # fmt: skip
