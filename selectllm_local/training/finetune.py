"""Fine-tune a base model on selected instructions: LoRA, or 4-bit NF4 QLoRA, with TRL.

This is how a selection is judged: the paper fine-tunes LLaMA-2-7B with QLoRA (r 64, alpha 16,
dropout 0.1, lr 2e-4) on the picks and their responses, then scores the model on held-out data.
Those values are the defaults of ``config.FinetuneConfig``.

Records become Alpaca-style prompt/completion pairs (``trainset.py``), and TRL's
``SFTTrainer`` computes the loss on the response only (its prompt-completion dataset format with
``completion_only_loss``). ``quantization="auto"`` loads the base model in NF4 on CUDA and trains
plain LoRA elsewhere. :func:`finetune_in_subprocess` runs the whole thing in another Python process
(``worker``: a fresh one per job, or one for all of an experiment's cells), so memory held by an
earlier stage (a vLLM engine, say) is certainly released.

Output directory: ``adapter/`` (peft adapter + tokenizer, moved into place atomically),
``finetune_config.json`` (resolved config, environment), ``train_log.jsonl`` (one line per logged
step: loss, learning rate, grad norm) and ``train_summary.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from selectllm_local.config import FinetuneConfig
from selectllm_local.errors import UserError, expected_failure
from selectllm_local.records import PoolItem
from selectllm_local.summaries import FinetuneSummary
from selectllm_local.training.lora import train_lora
from selectllm_local.training.trainset import (
    as_example,
    load_records,
    training_examples,
)

__all__ = ["FinetuneConfig", "finetune", "finetune_run", "train_lora", "training_examples"]

log = logging.getLogger(__name__)


def finetune(
    records: Sequence[PoolItem | Mapping[str, Any]],
    *,
    base_model: str | Path,
    out_dir: Path,
    config: FinetuneConfig,
    progress: bool | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """Fine-tune ``base_model`` on ``records``; write the adapter and logs to ``out_dir``.

    Returns the adapter directory. Records without a response raise :class:`UserError` before any
    model is loaded. A progress line shows the steps, the loss and the time left (``progress``:
    whether it shows; default ``progress.default_enabled``); ``on_progress`` takes its events
    instead (the subprocess relays them to its parent).
    """
    if on_progress is None:
        from selectllm_local.progress import status
        from selectllm_local.training.progress import StepDisplay

        with status("fine-tuning: loading the model", enabled=progress) as line:
            return finetune(
                records, base_model=base_model, out_dir=out_dir, config=config,
                on_progress=StepDisplay(line),
            )  # fmt: skip
    examples = training_examples(records)
    from selectllm_local.models.registry import resolve_model_path

    base_model = resolve_model_path(base_model, flag="--base-model")  # .gguf / known name
    if not Path(base_model).exists():
        raise UserError(f"Base model {base_model} does not exist: give a local model directory.")
    from selectllm_local.run.rundir import environment
    from selectllm_local.run.store import build_once, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train_log.jsonl"
    log_path.unlink(missing_ok=True)  # a fresh run starts a fresh log
    work = out / ".work"
    shutil.rmtree(work, ignore_errors=True)
    log.info("fine-tuning %s on %d records", base_model, len(examples))
    model, tok, stats = train_lora(
        examples,
        base_model=base_model,
        config=config,
        work_dir=work,
        log_path=log_path,
        on_progress=on_progress,
    )

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    adapter = build_once(out / "adapter", save, done=lambda _: False)  # a new adapter each run
    shutil.rmtree(work, ignore_errors=True)
    write_json(
        out / "finetune_config.json",
        {
            "base_model": str(base_model),
            "config": config.to_dict(),
            "resolved": stats["resolved"],
            "environment": environment(),
        },
    )
    write_json(out / "train_summary.json", stats)
    log.info(
        "fine-tuned in %.1f s: %d steps, final loss %s",
        stats["seconds"],
        stats["optimizer_steps"],
        stats["losses"][-1] if stats["losses"] else "n/a",
    )
    return adapter


def finetune_in_subprocess(
    records: Sequence[PoolItem | Mapping[str, Any]],
    *,
    base_model: str | Path,
    out_dir: Path,
    config: FinetuneConfig,
    progress: bool | None = None,
) -> Path:
    """:func:`finetune` in another Python process (GPU memory of earlier stages is surely free):
    a fresh one, or the one of an open ``worker.shared_process`` block.

    The child's log goes to ``out_dir/finetune.log``; its progress events are relayed to a
    progress line here (``trainprogress``). A user error in the child is raised here as
    :class:`UserError` with the child's message.
    """
    from selectllm_local.run.store import write_json, write_jsonl

    examples = training_examples(records)  # fail here, before starting a process
    from selectllm_local.models.registry import resolve_model_path

    base_model = resolve_model_path(base_model, flag="--base-model")  # convert a .gguf once, here
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train_records.jsonl", _as_records(records))
    job = out / "finetune_job.json"
    write_json(
        job,
        {
            "records": str(out / "train_records.jsonl"),
            "base_model": str(base_model),
            "out_dir": str(out),
            "config": config.to_dict(),
        },
    )
    log.info(
        "fine-tuning in a subprocess (%d records), log: %s", len(examples), out / "finetune.log"
    )
    from selectllm_local.progress import status
    from selectllm_local.training.progress import StepDisplay
    from selectllm_local.training.worker import shared_process

    with (
        open(out / "finetune.log", "w", encoding="utf-8") as fh,
        status("fine-tuning: starting", enabled=progress) as line,
        shared_process() as proc,  # an experiment's one process, else a fresh one
    ):
        rc = proc.run(job, fh, StepDisplay(line))
    if rc != 0:
        tail = (
            (out / "finetune.log").read_text("utf-8", errors="replace").strip().splitlines()[-15:]
        )
        if rc == UserError.exit_code and tail:
            raise UserError(tail[-1].removeprefix("UserError: "))
        raise RuntimeError(
            f"fine-tuning subprocess failed with exit code {rc}; last lines of "
            f"{out / 'finetune.log'}:\n" + "\n".join(tail)
        )
    return out / "adapter"


def finetune_summary(out_dir: Path, adapter: Path) -> FinetuneSummary:
    """What ``finetune`` reports: the adapter and log, and the trainer's numbers when it ran."""
    from selectllm_local.run.store import read_json

    summary = FinetuneSummary(adapter=str(adapter), train_log=str(out_dir / "train_log.jsonl"))
    trained = out_dir / "train_summary.json"
    if trained.exists():
        s = read_json(trained)
        summary.train_loss = s.get("train_loss")
        summary.optimizer_steps = s.get("optimizer_steps")
        summary.seconds = s.get("seconds")
    return summary


def finetune_run(
    selected: Path | Sequence[PoolItem | Mapping[str, Any]],
    *,
    base_model: str | Path,
    out_dir: Path,
    config: FinetuneConfig,
    subprocess: bool = True,
    progress: bool | None = None,
) -> Path:
    """The ``finetune`` command and the experiment's training step: records or a records file
    (``selected.jsonl``), trained in a fresh process unless ``subprocess`` is False."""
    records = load_records(selected) if isinstance(selected, (str, Path)) else selected
    run = finetune_in_subprocess if subprocess else finetune
    return run(records, base_model=base_model, out_dir=out_dir, config=config, progress=progress)


def _as_records(records: Sequence[PoolItem | Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(as_example(r)) for r in records]


def _run_job(path: Path) -> int:
    """Train one ``finetune_job.json`` (written by :func:`finetune_in_subprocess`): 0, or the
    user-error code after its message, the last line of the output."""
    job = json.loads(path.read_text("utf-8"))
    from selectllm_local.run.store import read_jsonl
    from selectllm_local.training.progress import print_event

    try:
        finetune(
            read_jsonl(Path(job["records"])),
            base_model=job["base_model"],
            out_dir=Path(job["out_dir"]),
            config=FinetuneConfig(**job["config"]),
            on_progress=print_event,  # relayed to the parent's progress line
        )
    except (UserError, ModuleNotFoundError, OSError) as exc:  # the CLI's rule, in the child
        err = expected_failure(exc, feature="Fine-tuning", folders=[Path(job["out_dir"])])
        if err is None:
            raise
        sys.stdout.flush()
        sys.stderr.write(f"UserError: {err}\n")
        return UserError.exit_code
    return 0


def _main(argv: list[str]) -> int:
    """``--serve``: jobs from standard input, one path a line (``worker``); else one job file."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if argv == ["--serve"]:
        from selectllm_local.training.worker import serve

        return serve(_run_job)
    return _run_job(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
