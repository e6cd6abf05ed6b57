"""The work of each stage of an experiment, turned into seconds (``costs.estimate``).

One function per stage reads the experiment file, its data, the rates and the models sized
(``Work``) and returns ``Stage`` rows: how often the stage runs, a line on what it does, its
seconds on this CPU (None without measured rates) and on one GPU, and the tokens it handles.
Which methods a stage covers comes from the baseline registry (``baselines.registry``): the
perplexity stage covers the baselines scored by the base model, the IFD stage those scored on
the ``[engine]`` model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from selectllm_local.baselines.registry import LIKELIHOOD_METHODS, Baseline, baseline_of
from selectllm_local.config.training import EVALUATE_BATCH_SIZE
from selectllm_local.costs.rates import Costs, ModelSize, model_size

if TYPE_CHECKING:
    from selectllm_local.bench.dry import RoundOne
    from selectllm_local.experiment.config import ExperimentConfig
    from selectllm_local.experiment.inputs import ExperimentInputs
    from selectllm_local.records import PoolItem
    from selectllm_local.selection.prompttokens import Count

VLLM_MAX_SEQS = 256  # vLLM's default max_num_seqs: sequences decoded per engine step


@dataclass
class Stage:
    """One line of the estimate: a stage, how often it runs, and its cost over all runs."""

    name: str
    runs: int
    detail: str
    cpu_seconds: float | None
    gpu_seconds: float
    tokens: float = 0.0  # all runs: prompt tokens (selection, scoring) or trained/generated tokens
    gpu_measured: bool = False  # gpu_seconds scaled from --gpu-rates, not the datasheet


def prompt_k(cfg: ExperimentConfig, n: int, budget: int) -> int:
    """Candidates per prompt of a cell's plan: [plan] n_clusters, else the pipeline's rule."""
    from selectllm_local.config import PlanConfig
    from selectllm_local.run.pipeline import default_k

    plan = PlanConfig(pool=cfg.pool, budget=budget, **cfg.plan)
    return int(plan.n_clusters or default_k(n, budget, max_k=plan.max_k))


def counter(tokenizer: str | None) -> Count:
    """The token counter of a tokenizer folder (None: 4 characters per token)."""
    from selectllm_local.selection.prompttokens import token_counter

    return token_counter(tokenizer)[0]


@dataclass
class Work:
    """What every stage's estimate reads: the file, its data, the rates, the base model."""

    cfg: ExperimentConfig
    data: ExperimentInputs
    c: Costs
    base: ModelSize  # of the base model
    count_base: Count  # its token counter

    @property
    def items(self) -> list[PoolItem]:
        return self.data.pool_items

    def cells_of(self, method: str) -> int:
        return len(self.cfg.budgets) * len(self.cfg.seeds_of(method))

    @property
    def cells(self) -> int:
        return sum(self.cells_of(m) for m in self.cfg.methods)


def baseline(method: str) -> Baseline | None:
    """The registry entry of an experiment method (``name:variant``); None for ``select``."""
    name = method.partition(":")[0]
    return None if name == "select" else baseline_of(name)


def selection_stages(
    w: Work, selectors: list[str], sel_size: ModelSize | None, ks: dict[int, int]
) -> list[Stage]:
    """One selection per (select method, budget, selection seed)."""
    from selectllm_local.bench.dry import budget_terms, round_one

    cfg, c, n = w.cfg, w.c, len(w.items)
    stages: list[Stage] = []
    counted: dict[int, RoundOne] = {}  # round one's tokens depend on K only
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


def perplexity_stages(w: Work) -> list[Stage]:
    """The perplexity baselines (scored by the base model): every pool row, once per cell; the
    answer-perplexity kind first writes an answer per row."""
    from selectllm_local.baselines.perplexity import ANSWER_TOKENS
    from selectllm_local.training.trainset import render_prompt

    cfg, c, items, n = w.cfg, w.c, w.items, len(w.items)
    ppl = [m for m in cfg.methods if (b := baseline(m)) is not None and b.scorer == "base"]
    if not ppl:
        return []
    stages: list[Stage] = []
    scorer = model_size(str(cfg.baseline.scorer_model))
    count = counter(scorer.tokenizer)
    prompt_tok = sum(min(256, count(render_prompt(it.instruction, it.input))) for it in items)
    instr_tok = sum(count(it.instruction) for it in items)
    batch = cfg.baseline.scorer_batch_size
    for method in ppl:
        if baseline_of(method.partition(":")[0]).answers:
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


def ifd_stages(w: Work) -> list[Stage]:
    """IFD (the baselines scored on the [engine] model): every pool row once per experiment, two
    prefills."""
    cfg, c, items = w.cfg, w.c, w.items
    if not any((b := baseline(m)) is not None and b.scorer == "engine" for m in cfg.methods):
        return []
    from selectllm_local.baselines.ifd import ifd_prompt

    scorer = model_size(str(cfg.engine.model))
    count = counter(scorer.tokenizer)
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
        f"IFD scores ({', '.join(LIKELIHOOD_METHODS)})", 1, f"{len(items):,} rows, {scored:,.0f} tokens, scored once",
        cpu, gpu_s, scored,
    )]  # fmt: skip


def finetune_stage(w: Work) -> Stage:
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


def evaluation_stage(w: Work) -> Stage:
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


def nll_stages(w: Work) -> list[Stage]:
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
