"""The ``selectllm`` command line: one thin function per command, no logic.

Each command parses its options, builds a validated config and calls one library function.
Errors users can cause (``UserError``) print one paragraph and exit with code 2.
Heavy libraries are imported inside the commands, so ``selectllm --help`` is instant.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from selectllm_local import __version__
from selectllm_local.errors import UserError

app = typer.Typer(
    name="selectllm",
    no_args_is_help=True,
    add_completion=False,
    help="Choose the instructions most worth annotating with a local LLM (SelectLLM), then prove it.",
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def _console(stderr: bool = False):  # noqa: ANN202 - rich import kept lazy-ish
    from rich.console import Console

    return Console(stderr=stderr)


def handle_errors(fn: F) -> F:
    """Turn user errors into one paragraph on stderr and exit code 2; Ctrl-C into 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            _console(stderr=True).print(
                f"[bold red]Error:[/] {exc}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(code=getattr(exc, "exit_code", 2)) from None
        except KeyboardInterrupt:
            _console(stderr=True).print(
                "[yellow]Interrupted.[/] Finished work is saved; run the same command again to resume."
            )
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=_console(stderr=True), show_path=False, show_time=False)],
    )
    for noisy in ("httpx", "urllib3", "filelock", "faiss", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def main_callback(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """selectllm-local: SelectLLM instruction selection with local open-weight models."""
    _setup_logging(verbose)


# Options shared by commands that plan (plan, select, baseline).
PoolArg = Annotated[
    Path, typer.Argument(help="Pool file (.jsonl/.json/.csv/.parquet) or a datasets folder.")
]
BudgetOpt = Annotated[
    int | None, typer.Option("--budget", "-n", help="How many instructions to select.")
]
RunDirOpt = Annotated[
    Path | None, typer.Option("--run-dir", help="Run directory [default: runs/<pool stem>].")
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="TOML config file (flags override it).")
]
LayoutOpt = Annotated[
    str | None, typer.Option("--layout", help="diverse (default, paper) | cluster | random.")
]
KOpt = Annotated[
    int | None,
    typer.Option("--k", help="Candidates per prompt (= clusters) [default: pool/1000, 2..max-k]."),
]
MaxKOpt = Annotated[int | None, typer.Option("--max-k", help="Cap on the default K [default: 32].")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed [default: 0].")]
EmbedderOpt = Annotated[
    str | None,
    typer.Option("--embedder", help="Embedding model [default: packaged all-MiniLM-L6-v2]."),
]
EmbedBatchOpt = Annotated[
    int | None, typer.Option("--embed-batch-size", help="Embedding batch size [default: 64].")
]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="cpu or cuda [default: cuda if available].")
]
InstrFieldOpt = Annotated[
    str | None, typer.Option("--instruction-field", help="Field with the instruction.")
]
InputFieldOpt = Annotated[
    str | None, typer.Option("--input-field", help="Field with the input/context.")
]
OutputFieldOpt = Annotated[
    str | None, typer.Option("--output-field", help="Field with the response.")
]
CategoryFieldOpt = Annotated[
    str | None, typer.Option("--category-field", help="Field with a category label.")
]
SkipBadOpt = Annotated[
    bool | None,
    typer.Option("--skip-bad-rows/--no-skip-bad-rows", help="Skip malformed rows and report them."),
]
OfflineOpt = Annotated[
    bool | None, typer.Option("--offline/--online", help="Refuse hub ids; local paths only.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]


# Options every planning command takes (plan, select, baseline): option name -> config field.
PLAN_OPTIONS = {
    "pool": "pool",
    "budget": "budget",
    "run_dir": "run_dir",
    "layout": "layout",
    "k": "n_clusters",
    "max_k": "max_k",
    "seed": "seed",
    "embedder": "embedder",
    "embed_batch_size": "embed_batch_size",
    "device": "device",
    "instruction_field": "instruction_field",
    "input_field": "input_field",
    "output_field": "output_field",
    "category_field": "category_field",
    "skip_bad_rows": "skip_bad_rows",
    "tokenizer": "tokenizer",
    "offline": "offline",
}


def _plan_flags(options: dict[str, Any]) -> dict[str, Any]:
    """The planning options a command was given (its ``locals()``), keyed by config field."""
    return {field: options[name] for name, field in PLAN_OPTIONS.items() if name in options}


@app.command()
@handle_errors
def plan(
    pool: PoolArg,
    budget: BudgetOpt = None,
    run_dir: RunDirOpt = None,
    config: ConfigOpt = None,
    layout: LayoutOpt = None,
    k: KOpt = None,
    max_k: MaxKOpt = None,
    seed: SeedOpt = None,
    embedder: EmbedderOpt = None,
    embed_batch_size: EmbedBatchOpt = None,
    device: DeviceOpt = None,
    instruction_field: InstrFieldOpt = None,
    input_field: InputFieldOpt = None,
    output_field: OutputFieldOpt = None,
    category_field: CategoryFieldOpt = None,
    skip_bad_rows: SkipBadOpt = None,
    tokenizer: Annotated[
        str | None,
        typer.Option("--tokenizer", help="Local tokenizer for the prompt-token estimate."),
    ] = None,
    offline: OfflineOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Embed, cluster and lay out the prompts for a budget (no LLM); write the run directory."""
    from selectllm_local.config import PlanConfig, build_config
    from selectllm_local.pipeline import plan_run
    from selectllm_local.summaries import print_plan_summary

    cfg = build_config(PlanConfig, config, _plan_flags(locals()), section="plan")
    outcome = plan_run(cfg, progress=not json_out and sys.stderr.isatty())
    if json_out:
        print(json.dumps(outcome.summary(), indent=2))
    else:
        print_plan_summary(outcome.summary(), _console())


@app.command()
@handle_errors
def select(
    pool: PoolArg,
    budget: BudgetOpt = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="Selector model: local folder (or a hub id, not offline)."
        ),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option("--backend", help="auto (vLLM if installed) | vllm | transformers."),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode", help="generate (model writes ids) | logprobs (ranks by label logprob)."
        ),
    ] = None,
    reasons: Annotated[
        bool | None, typer.Option("--reasons/--no-reasons", help="Ask for a reason per pick.")
    ] = None,
    prompt: Annotated[
        Path | None,
        typer.Option("--prompt", help="Jinja2 prompt template (see prompts/README.md)."),
    ] = None,
    criteria: Annotated[
        Path | None, typer.Option("--criteria", help="Criteria file (what makes a pick worth it).")
    ] = None,
    max_candidate_tokens: Annotated[
        int | None, typer.Option("--max-candidate-tokens", help="Cut candidates to this [256].")
    ] = None,
    min_candidate_tokens: Annotated[
        int | None, typer.Option("--min-candidate-tokens", help="Floor when fitting context [32].")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", help="First-attempt temperature [0: greedy].")
    ] = None,
    retries: Annotated[
        int | None, typer.Option("--retries", help="Extra attempts for invalid answers [1].")
    ] = None,
    retry_temperature: Annotated[
        float | None, typer.Option("--retry-temperature", help="Temperature of retries [0.7].")
    ] = None,
    constrained: Annotated[
        bool | None,
        typer.Option(
            "--constrained/--no-constrained", help="Constrain decoding to the answer grammar."
        ),
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Answer token limit [enough for k ids].")
    ] = None,
    permutations: Annotated[
        int | None,
        typer.Option(
            "--permutations", help="Logprob mode: cyclic shifts averaged (position bias) [1]."
        ),
    ] = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="auto | bfloat16 | float16 | float32.")
    ] = None,
    max_model_len: Annotated[
        int | None, typer.Option("--max-model-len", help="Context length to run the model with.")
    ] = None,
    tensor_parallel_size: Annotated[
        int | None, typer.Option("--tensor-parallel-size", help="vLLM: GPUs per model [1].")
    ] = None,
    gpu_memory_utilization: Annotated[
        float | None,
        typer.Option("--gpu-memory-utilization", help="vLLM: GPU memory share [0.85]."),
    ] = None,
    max_num_seqs: Annotated[
        int | None, typer.Option("--max-num-seqs", help="vLLM: sequences in flight at once.")
    ] = None,
    prefix_caching: Annotated[
        bool | None,
        typer.Option("--prefix-caching/--no-prefix-caching", help="vLLM prefix caching [on]."),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            help="transformers: prompts per batch [16 on CPU, from free memory on CUDA].",
        ),
    ] = None,
    output_format: Annotated[
        str | None,
        typer.Option("--format", help="Extra output besides selected.jsonl: jsonl | parquet | hf."),
    ] = None,
    run_dir: RunDirOpt = None,
    config: ConfigOpt = None,
    layout: LayoutOpt = None,
    k: KOpt = None,
    max_k: MaxKOpt = None,
    seed: SeedOpt = None,
    embedder: EmbedderOpt = None,
    embed_batch_size: EmbedBatchOpt = None,
    device: DeviceOpt = None,
    instruction_field: InstrFieldOpt = None,
    input_field: InputFieldOpt = None,
    output_field: OutputFieldOpt = None,
    category_field: CategoryFieldOpt = None,
    skip_bad_rows: SkipBadOpt = None,
    offline: OfflineOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Let a local LLM choose exactly BUDGET instructions; resumes if run again."""
    from selectllm_local.config import SelectConfig, build_config
    from selectllm_local.pipeline import select_run

    cfg = build_config(
        SelectConfig,
        config,
        _plan_flags(locals())
        | dict(
            model=model,
            backend=backend,
            mode=mode,
            reasons=reasons,
            prompt=prompt,
            criteria=criteria,
            max_candidate_tokens=max_candidate_tokens,
            min_candidate_tokens=min_candidate_tokens,
            temperature=temperature,
            retries=retries,
            retry_temperature=retry_temperature,
            constrained=constrained,
            max_tokens=max_tokens,
            permutations=permutations,
            dtype=dtype,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_num_seqs=max_num_seqs,
            enable_prefix_caching=prefix_caching,
            batch_size=batch_size,
            format=output_format,
        ),
        section="select",
    )
    outcome = select_run(cfg, progress=not json_out and sys.stderr.isatty())
    if json_out:
        print(json.dumps(outcome.summary, indent=2))
        return
    s = outcome.summary
    c = s["counts"]
    con = _console()
    con.print(
        f"Selected [bold]{s['selected']}[/] of {s['pool']} instructions "
        f"({s['rounds']} round(s), backend {s['backend']}, mode {s['mode']})."
    )
    if s.get("note"):
        con.print(s["note"])
    con.print(
        f"Subsets: {c['subsets']} ({c['no_call']} needed no call, {c['resumed']} resumed), "
        f"valid first try {c['valid_first_try']}, retried {c['retried']}, fallback {c['fallback']}."
    )
    tp = s["throughput"]
    con.print(
        f"Tokens this run: {s['tokens_this_run']['prompt']} prompt, "
        f"{s['tokens_this_run']['output']} output; {tp['prompts_per_s']} prompts/s, "
        f"{tp['prompt_tokens_per_s']} prompt tokens/s. Total {s['seconds']['total']} s."
    )
    con.print(f"Wrote {outcome.files['selected']} and {outcome.run_dir / 'summary.json'}.")
    from selectllm_local.report import render_report

    con.print(f"Report: {render_report(outcome.run_dir)} (open it in a browser).")


@app.command()
@handle_errors
def baseline(
    name: Annotated[
        str,
        typer.Argument(help="random | length | perplexity | kcenter | diversity | cluster-random."),
    ],
    pool: PoolArg,
    budget: BudgetOpt = None,
    run_dir: RunDirOpt = None,
    config: ConfigOpt = None,
    seed: SeedOpt = None,
    layout: LayoutOpt = None,
    k: KOpt = None,
    max_k: MaxKOpt = None,
    embedder: EmbedderOpt = None,
    device: DeviceOpt = None,
    instruction_field: InstrFieldOpt = None,
    input_field: InputFieldOpt = None,
    output_field: OutputFieldOpt = None,
    skip_bad_rows: SkipBadOpt = None,
    offline: OfflineOpt = None,
    shortest: Annotated[
        bool, typer.Option("--shortest", help="length: shortest first instead of longest.")
    ] = False,
    band: Annotated[str, typer.Option("--band", help="perplexity: high | low | middle.")] = "high",
    scorer_model: Annotated[
        Path | None,
        typer.Option("--scorer-model", help="perplexity: local causal LM to score with."),
    ] = None,
    diversity_sample: Annotated[
        int, typer.Option("--diversity-sample", help="diversity: pool items compared with each.")
    ] = 500,
    json_out: JsonOpt = False,
) -> None:
    """Select with a baseline at the same budget (written like select's selected.jsonl)."""
    from selectllm_local.baselines import baseline_run
    from selectllm_local.config import PlanConfig, build_config

    cfg = build_config(PlanConfig, config, _plan_flags(locals()), section="plan")
    opts: dict[str, Any] = {}
    if name == "length":
        opts["shortest"] = shortest
    elif name == "perplexity":
        opts["band"] = band
    elif name == "diversity":
        opts["sample_size"] = diversity_sample
    outcome = baseline_run(
        name, cfg, scorer=scorer_model, progress=not json_out and sys.stderr.isatty(), **opts
    )
    if json_out:
        print(json.dumps(outcome.summary, indent=2))
    else:
        _console().print(
            f"{outcome.name}: selected {len(outcome.indices)} of {outcome.summary['pool']} "
            f"instructions -> {outcome.out_dir / 'selected.jsonl'}"
        )


@app.command()
@handle_errors
def split(
    pool: PoolArg,
    test: Annotated[int, typer.Option("--test", help="Rows to hold out as the test set.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for pool.jsonl and test.jsonl.")],
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    instruction_field: InstrFieldOpt = None,
    input_field: InputFieldOpt = None,
    output_field: OutputFieldOpt = None,
    skip_bad_rows: Annotated[
        bool, typer.Option("--skip-bad-rows", help="Skip malformed rows and report them.")
    ] = False,
) -> None:
    """Hold out a seeded test set (rows with a response) so evaluation uses unseen data."""
    from selectllm_local.data import FieldMap
    from selectllm_local.splits import split_run

    fields = FieldMap(instruction=instruction_field, input=input_field, output=output_field)
    outcome = split_run(
        pool,
        test_size=test,
        out_dir=out,
        seed=seed,
        fields=fields if fields.given() else None,
        skip_bad_rows=skip_bad_rows,
    )
    _console().print(
        f"{outcome.source_rows} rows -> {outcome.pool_rows} in {outcome.pool_path}, "
        f"{outcome.test_rows} in {outcome.test_path} (seed {seed})"
    )


@app.command()
@handle_errors
def experiment(
    config: Annotated[Path, typer.Argument(help="Experiment config (TOML; see configs/).")],
    run_dir: Annotated[
        Path | None,
        typer.Option("--run-dir", help="Run directory [default: from the config, or runs/]."),
    ] = None,
    max_cells: Annotated[
        int | None, typer.Option("--max-cells", help="Stop after running this many cells.")
    ] = None,
) -> None:
    """Methods x budgets x seeds: select, fine-tune, evaluate; write the results table and plot.

    Resumable: re-running the same command skips finished cells.
    """
    from selectllm_local.experiment import run_experiment

    outcome = run_experiment(
        config, run_dir=run_dir, max_cells=max_cells, progress=sys.stderr.isatty()
    )
    con = _console()
    if outcome.table_md is not None:
        con.print(outcome.table_md.read_text("utf-8"), markup=False, highlight=False)
    con.print(
        f"{len(outcome.cells_run)} cells run, {len(outcome.cells_skipped)} already done, "
        f"{len(outcome.cells_pending)} left; table {outcome.table_md}, plot {outcome.plot}"
    )


@app.command()
@handle_errors
def finetune(
    selected: Annotated[
        Path, typer.Argument(help="selected.jsonl (or any JSONL of instruction/input/output).")
    ],
    base_model: Annotated[Path, typer.Option("--base-model", help="Local model folder.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (adapter/, logs).")],
    lora_r: Annotated[int | None, typer.Option("--lora-r", help="LoRA rank [64].")] = None,
    lora_alpha: Annotated[int | None, typer.Option("--lora-alpha", help="LoRA alpha [16].")] = None,
    lora_dropout: Annotated[
        float | None, typer.Option("--lora-dropout", help="LoRA dropout [0.1].")
    ] = None,
    learning_rate: Annotated[
        float | None, typer.Option("--learning-rate", help="Learning rate [2e-4].")
    ] = None,
    epochs: Annotated[float | None, typer.Option("--epochs", help="Epochs [3].")] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Stop after N optimizer steps [-1: epochs].")
    ] = None,
    max_length: Annotated[
        int | None, typer.Option("--max-length", help="Tokens per example [1024].")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Batch size [4].")] = None,
    grad_accum: Annotated[
        int | None, typer.Option("--grad-accum", help="Gradient accumulation [4].")
    ] = None,
    quantization: Annotated[
        str | None, typer.Option("--quantization", help="auto (nf4 on CUDA) | nf4 | none.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed [0].")] = None,
    subprocess: Annotated[
        bool, typer.Option("--subprocess/--in-process", help="Train in a fresh process.")
    ] = True,
) -> None:
    """Fine-tune BASE_MODEL with LoRA / 4-bit QLoRA on selected records (the paper's recipe)."""
    from selectllm_local.finetune import (
        FinetuneConfig,
        finetune_in_subprocess,
        load_records,
    )
    from selectllm_local.finetune import finetune as run_finetune

    flags: dict[str, Any] = {
        "lora_r": lora_r,
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
        "learning_rate": learning_rate,
        "epochs": epochs,
        "max_steps": max_steps,
        "max_length": max_length,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "quantization": quantization,
        "seed": seed,
    }
    cfg = FinetuneConfig(**{k: v for k, v in flags.items() if v is not None})
    run = finetune_in_subprocess if subprocess else run_finetune
    adapter = run(load_records(selected), base_model=base_model, out_dir=out, config=cfg)
    _console().print(f"adapter written to {adapter}; training log {out / 'train_log.jsonl'}")


@app.command()
@handle_errors
def evaluate(
    test_set: Annotated[
        Path,
        typer.Argument(
            help="JSONL of instruction/input/output, or a prompt_format.json + test_gts.json folder."
        ),
    ],
    base_model: Annotated[Path, typer.Option("--base-model", help="Local model folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for predictions.jsonl, scores.json.")],
    adapter: Annotated[
        Path | None, typer.Option("--adapter", help="LoRA adapter folder (from finetune).")
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            "--backend", help="auto (vLLM on a GPU, else transformers) | vllm | transformers."
        ),
    ] = "auto",
    limit: Annotated[int | None, typer.Option("--limit", help="First N test examples.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Answer length.")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", help="transformers batch.")] = 16,
    max_prompt_tokens: Annotated[
        int, typer.Option("--max-prompt-tokens", help="Longer prompts keep their end.")
    ] = 1024,
    seed: Annotated[int, typer.Option("--seed", help="Seed.")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Answer a test set with base model + adapter; score Rouge-L F1 and embedding cosine."""
    from selectllm_local.evaluate import evaluate_run

    outcome = evaluate_run(
        test_set,
        base_model=base_model,
        adapter=adapter,
        out_dir=out,
        backend=backend,
        limit=limit,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_prompt_tokens=max_prompt_tokens,
        seed=seed,
        progress=not json_out and sys.stderr.isatty(),
    )
    if json_out:
        print(json.dumps(outcome.summary(), indent=2))
    else:
        _console().print(
            f"Rouge-L F1 {outcome.rougeL_f1:.4f}, cosine {outcome.cosine:.4f} on {outcome.n} "
            f"examples ({outcome.backend}); per-example outputs in {out / 'predictions.jsonl'}"
        )


@app.command()
@handle_errors
def bench(
    pool: Annotated[
        Path, typer.Option("--pool", help="Pool whose rows make the prompts (Dolly, Alpaca, ...).")
    ],
    preset: Annotated[
        str,
        typer.Option(
            "--preset",
            help="tiny (CI, seconds), cpu (Qwen2.5-0.5B shape, 14 candidates) or gpu "
            "(Llama-3-8B shape, batch 64, ids + logprobs, one GPU, < 5 min).",
        ),
    ] = "tiny",
    shape: Annotated[
        str | None, typer.Option("--shape", help="Random-weight model shape (see random-model).")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="A local model folder instead of a shape.")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="auto | bfloat16 | float16 | float32.")
    ] = None,
    setting: Annotated[
        list[str] | None,
        typer.Option(
            "--setting",
            help="Repeatable: vllm, vllm:free, vllm:logprobs, vllm:reasons, vllm:nocache, transformers:b8.",
        ),
    ] = None,
    subsets: Annotated[int | None, typer.Option("--subsets", help="Prompts per repeat.")] = None,
    candidates: Annotated[
        int | None, typer.Option("--candidates", help="Candidates per prompt (K).")
    ] = None,
    repeats: Annotated[
        int | None, typer.Option("--repeats", help="Timed repeats (median reported).")
    ] = None,
    stages: Annotated[
        bool | None,
        typer.Option(
            "--stages/--no-stages",
            help="Also run one real select and split its time: engine vs our code [preset's].",
        ),
    ] = None,
    machine: Annotated[
        str, typer.Option("--machine", help="Name of the machine, saved with the results.")
    ] = "",
    out: Annotated[
        Path, typer.Option("--out", help="Folder for <name>.json and <name>.png.")
    ] = Path("benchmarks/results"),
    name: Annotated[
        str | None, typer.Option("--name", help="File stem [default: select_<preset>].")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Estimate prompts, tokens, FLOPs and time; load no model."),
    ] = False,
    gpu: Annotated[
        str, typer.Option("--gpu", help="Dry run: h100, h200, a100, l40s, l4, b200, or measured.")
    ] = "h100",
    utilization: Annotated[
        float, typer.Option("--utilization", help="Dry run: share of the peak reached.")
    ] = 0.4,
    budget: BudgetOpt = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the JSON document instead of a table.")
    ] = False,
) -> None:
    """Benchmark selection throughput against this machine's measured matmul peak."""
    from selectllm_local import bench as bench_lib
    from selectllm_local import benchdry, benchout

    if dry_run:
        est = benchdry.dry_run(pool, shape=shape or "llama-3-8b", model=model, gpu=gpu,
                               utilization=utilization, candidates=candidates, budget=budget)  # fmt: skip
        print(json.dumps(est, indent=2) if json_out else benchdry.format_dry_run(est))
        return
    cfg = bench_lib.config_from_preset(
        preset, pool=pool, shape=shape, model=model, dtype=dtype, subsets=subsets,
        candidates=candidates, repeats=repeats, machine=machine, stages=stages,
        settings=[bench_lib.parse_setting(s) for s in setting] if setting else None,
    )  # fmt: skip
    doc = bench_lib.run_benchmark(cfg, progress=sys.stderr.isatty())
    paths = benchout.write_outputs(doc, out, name or f"select_{preset}")
    if json_out:
        print(json.dumps(doc, indent=2))
    else:
        _console().print(benchout.results_table(doc))
        _console().print(f"Wrote {', '.join(str(p) for p in paths.values())}.")


@app.command()
@handle_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of a plan/select run.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="HTML file [default: RUN_DIR/report.html].")
    ] = None,
) -> None:
    """Render an HTML report of a run: clusters, picks, lengths, positions, throughput."""
    from selectllm_local.report import render_report

    path = render_report(run_dir, out)
    _console().print(f"Wrote {path} (self-contained HTML; open it in a browser).")


@app.command("random-model")
@handle_errors
def random_model(
    shape: Annotated[
        str,
        typer.Argument(
            help="Shape: tiny-qwen2, tiny-llama, qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-7b, llama-3-8b."
        ),
    ],
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the model to.")],
    seed: Annotated[int, typer.Option("--seed", help="Weight seed.")] = 0,
    dtype: Annotated[
        str, typer.Option("--dtype", help="bfloat16 | float16 | float32.")
    ] = "bfloat16",
) -> None:
    """Write a random-weight model of a real shape (offline demos and throughput benchmarks)."""
    from selectllm_local.tinymodel import build_random_model

    path = build_random_model(out_dir, shape, seed=seed, dtype=dtype)
    _console().print(
        f"Wrote a random-weight {shape} model to {path} (not a trained model: for demos and benchmarks)."
    )


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
