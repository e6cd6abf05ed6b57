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


def _plan_flags(**kw: Any) -> dict[str, Any]:
    return kw


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

    cfg = build_config(
        PlanConfig,
        config,
        dict(
            pool=pool,
            budget=budget,
            run_dir=run_dir,
            layout=layout,
            n_clusters=k,
            max_k=max_k,
            seed=seed,
            embedder=embedder,
            embed_batch_size=embed_batch_size,
            device=device,
            instruction_field=instruction_field,
            input_field=input_field,
            output_field=output_field,
            category_field=category_field,
            skip_bad_rows=skip_bad_rows,
            tokenizer=tokenizer,
            offline=offline,
        ),
        section="plan",
    )
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
        int | None, typer.Option("--batch-size", help="transformers: prompts per batch [16].")
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
        dict(
            pool=pool,
            budget=budget,
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
            run_dir=run_dir,
            layout=layout,
            n_clusters=k,
            max_k=max_k,
            seed=seed,
            embedder=embedder,
            embed_batch_size=embed_batch_size,
            device=device,
            instruction_field=instruction_field,
            input_field=input_field,
            output_field=output_field,
            category_field=category_field,
            skip_bad_rows=skip_bad_rows,
            offline=offline,
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


@app.command()
@handle_errors
def baseline(name: str, pool: PoolArg, budget: BudgetOpt = None) -> None:
    """Select with a baseline (random, length, perplexity, kcenter, diversity, cluster-random)."""
    raise UserError("baseline is not implemented yet.")


@app.command()
@handle_errors
def split(pool: PoolArg) -> None:
    """Split a pool into a held-out test set and a selection pool."""
    raise UserError("split is not implemented yet.")


@app.command()
@handle_errors
def experiment(config: Annotated[Path, typer.Argument(help="Experiment config (TOML).")]) -> None:
    """Methods x budgets x seeds: select, fine-tune, evaluate; write the results table and plot."""
    raise UserError("experiment is not implemented yet.")


@app.command()
@handle_errors
def bench() -> None:
    """Benchmark selection throughput against this machine's measured peak."""
    raise UserError("bench is not implemented yet.")


@app.command()
@handle_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of a plan/select run.")],
) -> None:
    """Render an HTML report of a run: clusters, picks, lengths, positions, throughput."""
    raise UserError("report is not implemented yet.")


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
