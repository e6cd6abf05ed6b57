"""Fine-tune a base model on selected instructions: LoRA, or 4-bit NF4 QLoRA, with TRL.

This is how a selection is judged: the paper fine-tunes LLaMA-2-7B with QLoRA (r 64, alpha 16,
dropout 0.1, lr 2e-4) on the picks and their responses, then scores the model on held-out data.
Those values are the defaults of ``config.FinetuneConfig``.

Records become Alpaca-style prompt/completion pairs (``trainset.py``), and TRL's
``SFTTrainer`` computes the loss on the response only (its prompt-completion dataset format with
``completion_only_loss``). ``quantization="auto"`` loads the base model in NF4 on CUDA and trains
plain LoRA elsewhere. :func:`finetune_in_subprocess` runs the whole thing in a fresh Python process
so memory held by an earlier stage (a vLLM engine, say) is certainly released.

Output directory: ``adapter/`` (peft adapter + tokenizer, moved into place atomically),
``finetune_config.json`` (resolved config, environment), ``train_log.jsonl`` (one line per logged
step: loss, learning rate, grad norm) and ``train_summary.json``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from selectllm_local.config import FinetuneConfig
from selectllm_local.errors import UserError, expected_failure
from selectllm_local.records import PoolItem
from selectllm_local.training.trainset import (
    as_example,
    fit_to_length,
    load_records,
    split_validation,
    training_examples,
)

log = logging.getLogger(__name__)

# -- training ----------------------------------------------------------------------------------


def length_grouping_kwargs(on: bool) -> dict[str, Any]:
    """Length-grouped batches for this transformers version (``train_sampling_strategy`` in
    transformers 5.x, the ``group_by_length`` flag before)."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    if "train_sampling_strategy" in names:
        return {"train_sampling_strategy": "group_by_length" if on else "random"}
    return {"group_by_length": on}


def warmup_kwargs(ratio: float, version: str | None = None) -> dict[str, Any]:
    """The warm-up setting for this transformers version.

    transformers 5 reads a float ``warmup_steps`` in [0, 1) as a share of all steps and warns
    that ``warmup_ratio`` is deprecated; transformers 4 takes the share as ``warmup_ratio`` and
    would read a float ``warmup_steps`` as 0 steps. Either way the warm-up is ``ratio`` of training.
    """
    if version is None:
        import transformers

        version = transformers.__version__
    major = int(version.split(".")[0])
    return {"warmup_steps": float(ratio)} if major >= 5 else {"warmup_ratio": float(ratio)}


def validation_kwargs(config: FinetuneConfig) -> dict[str, Any]:
    """Trainer arguments: evaluate (and keep the best epoch) when there is a validation split."""
    if not config.val_fraction:
        return {"save_strategy": "no"}
    kw: dict[str, Any] = {"eval_strategy": "epoch", "per_device_eval_batch_size": config.batch_size}
    if config.early_stopping_patience:
        kw.update(
            save_strategy="epoch",
            save_total_limit=1,
            load_best_model_at_end=True,  # the adapter kept is the best epoch's, not the last
            metric_for_best_model="eval_loss",
            greater_is_better=False,
        )
    else:
        kw["save_strategy"] = "no"
    return kw


def early_stopping_callbacks(config: FinetuneConfig) -> list[Any]:
    if not config.early_stopping_patience:
        return []
    from transformers import EarlyStoppingCallback

    return [
        EarlyStoppingCallback(
            early_stopping_patience=config.early_stopping_patience,
            early_stopping_threshold=float(config.early_stopping_threshold),
        )
    ]


def resolve(config: FinetuneConfig) -> dict[str, Any]:
    """Settings that depend on the machine: device, quantization, dtype, checkpointing."""
    from selectllm_local import hardware

    cuda = hardware.cuda_available()
    quant = config.quantization if config.quantization != "auto" else ("nf4" if cuda else "none")
    dtype = hardware.resolve_dtype(config.dtype, "cuda" if cuda else "cpu", cpu_auto="float32")
    gc = config.gradient_checkpointing if config.gradient_checkpointing is not None else cuda
    return {
        "device": "cuda" if cuda else "cpu",
        "quantization": quant,
        "dtype": dtype,
        "gradient_checkpointing": gc,
    }


def _param_fingerprint(model: Any, *, trainable: bool) -> dict[str, tuple[float, float]]:
    """(sum, sum of squares) per parameter: enough to see whether a tensor moved, cheap to keep."""
    out = {}
    for name, p in model.named_parameters():
        if (
            p.requires_grad == trainable
        ):  # 4-bit weights (uint8) count too: any byte that moves shows
            t = p.detach().double()
            out[name] = (float(t.sum()), float((t * t).sum()))
    return out


def train_lora(
    examples: list[dict[str, str]],
    *,
    base_model: str | Path,
    config: FinetuneConfig,
    work_dir: Path,
    log_path: Path | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Train LoRA adapters on instruction/input/output ``examples``.

    ``on_progress`` receives an event at the start, after each step and at each logged loss
    (``trainprogress.step_callback``). Returns (peft model in eval mode, tokenizer, stats).
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        PrinterCallback,
        TrainerCallback,
    )
    from trl import SFTConfig, SFTTrainer

    from selectllm_local.run.store import AppendLog

    res = resolve(config)
    torch_dtype = getattr(torch, res["dtype"])
    tok = AutoTokenizer.from_pretrained(str(base_model))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    load_kw: dict[str, Any] = {"dtype": torch_dtype}
    if res["quantization"] == "nf4":
        load_kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype,
        )
        load_kw["device_map"] = {"": 0 if res["device"] == "cuda" else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(str(base_model), **load_kw)
    if res["quantization"] == "nf4":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(res["gradient_checkpointing"])
        )
    peft_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    args = SFTConfig(
        output_dir=str(work_dir),
        num_train_epochs=float(config.epochs),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        **warmup_kwargs(config.warmup_ratio),
        **length_grouping_kwargs(config.group_by_length),
        max_length=config.max_length,
        completion_only_loss=True,
        gradient_checkpointing=bool(res["gradient_checkpointing"]),
        bf16=res["dtype"] == "bfloat16" and res["device"] == "cuda",
        fp16=res["dtype"] == "float16" and res["device"] == "cuda",
        use_cpu=res["device"] == "cpu",
        logging_steps=config.logging_steps,
        **validation_kwargs(config),
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    pairs, fit_counts = fit_to_length(examples, tok, config.max_length)
    if not pairs:
        raise UserError(
            f"Every example's instruction is longer than --max-length {config.max_length} tokens "
            "allows; raise --max-length."
        )
    train_pairs, val_pairs = split_validation(pairs, config.val_fraction, config.seed)
    steps: list[dict[str, Any]] = []

    class _LogSteps(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
            if logs:
                row = {"step": state.global_step, "epoch": state.epoch, **logs}
                steps.append(row)
                log.info("step %d: %s", state.global_step, logs)
                if sink is not None:
                    sink.append(row)

    sink = AppendLog(log_path) if log_path is not None else None
    try:
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(train_pairs),
            eval_dataset=Dataset.from_list(val_pairs) if val_pairs else None,
            processing_class=tok,
            peft_config=peft_config,
            callbacks=[_LogSteps(), *early_stopping_callbacks(config), *_progress(on_progress)],
        )
        trainer.remove_callback(PrinterCallback)  # it prints to stdout; _LogSteps logs instead
        peft_model = trainer.model
        base_before = _param_fingerprint(peft_model, trainable=False)
        lora_before = _param_fingerprint(peft_model, trainable=True)
        t0 = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - t0
    finally:
        if sink is not None:
            sink.close()
    base_after = _param_fingerprint(peft_model, trainable=False)
    lora_after = _param_fingerprint(peft_model, trainable=True)
    stats = {
        "resolved": res,
        "examples": len(examples),
        **fit_counts,
        "optimizer_steps": int(trainer.state.global_step),
        "train_loss": float(result.training_loss),
        "losses": [r["loss"] for r in steps if "loss" in r],
        "train_examples": len(train_pairs),
        "val_examples": len(val_pairs),
        "eval_losses": [r["eval_loss"] for r in steps if "eval_loss" in r],
        "best_eval_loss": trainer.state.best_metric,
        "epochs_run": float(trainer.state.epoch or 0.0),
        "seconds": round(seconds, 3),
        "trainable_params": int(sum(p.numel() for p in peft_model.parameters() if p.requires_grad)),
        "lora_tensors_changed": sum(lora_before[k] != lora_after[k] for k in lora_before),
        "lora_tensors": len(lora_before),
        "base_weights_unchanged": base_before == base_after,
    }
    peft_model.eval()
    return peft_model, tok, stats


def _progress(emit: Callable[[dict[str, Any]], None] | None) -> list[Any]:
    from selectllm_local.training.progress import step_callback

    return [step_callback(emit)] if emit is not None else []


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
    from selectllm_local.run.store import write_json

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
    tmp = out / ".adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    adapter = out / "adapter"
    shutil.rmtree(adapter, ignore_errors=True)
    os.replace(tmp, adapter)
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
    """:func:`finetune` in a fresh Python process (GPU memory of earlier stages is surely free).

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
    from selectllm_local.training.progress import StepDisplay, relay

    with (
        open(out / "finetune.log", "w", encoding="utf-8") as fh,
        status("fine-tuning: starting", enabled=progress) as line,
        subprocess.Popen(
            [sys.executable, "-m", "selectllm_local.training.finetune", str(job)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        ) as proc,
    ):
        assert proc.stdout is not None
        relay(proc.stdout, fh, StepDisplay(line))
        proc.wait()
    if proc.returncode != 0:
        tail = (
            (out / "finetune.log").read_text("utf-8", errors="replace").strip().splitlines()[-15:]
        )
        if proc.returncode == UserError.exit_code and tail:
            raise UserError(tail[-1].removeprefix("UserError: "))
        raise RuntimeError(
            f"fine-tuning subprocess failed with exit code {proc.returncode}; last lines of "
            f"{out / 'finetune.log'}:\n" + "\n".join(tail)
        )
    return out / "adapter"


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


def _main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    job = json.loads(Path(argv[0]).read_text("utf-8"))
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
        sys.stderr.write(f"UserError: {err}\n")
        return UserError.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
