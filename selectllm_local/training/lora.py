"""The LoRA training step: the base model, TRL's arguments, the trainer and what it reports.

Why apart from ``finetune``: ``finetune`` turns records into a run directory (examples, the
adapter folder, the summary files, the subprocess); this module is the one place that talks to
transformers, peft and TRL, and the version shims their argument names need.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectllm_local.config import FinetuneConfig
from selectllm_local.errors import UserError
from selectllm_local.progress import quiet_weight_bars
from selectllm_local.training.trainset import fit_to_length, split_validation

log = logging.getLogger("selectllm_local.training.finetune")


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
    res = resolve(config)
    model, tok = load_base(base_model, res)
    args = sft_args(config, res, work_dir)
    pairs, fit_counts = fit_to_length(examples, tok, config.max_length)
    if not pairs:
        raise UserError(
            f"Every example's instruction is longer than --max-length {config.max_length} tokens "
            "allows; raise --max-length."
        )
    train_pairs, val_pairs = split_validation(pairs, config.val_fraction, config.seed)
    run = _train(model, tok, args, config, train_pairs, val_pairs, log_path, on_progress)
    done = run.stats()
    stats = {
        "resolved": res,
        "examples": len(examples),
        **fit_counts,
        "optimizer_steps": done.pop("optimizer_steps"),
        "train_loss": done.pop("train_loss"),
        "losses": done.pop("losses"),
        "train_examples": len(train_pairs),
        "val_examples": len(val_pairs),
        **done,  # eval losses, epochs, seconds, parameter counts and checks
    }
    run.model.eval()
    return run.model, tok, stats


def load_base(base_model: str | Path, res: dict[str, Any]) -> tuple[Any, Any]:
    """The base model (in NF4 when ``res`` says so, ready for k-bit training) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

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
    with quiet_weight_bars(base_model):
        model = AutoModelForCausalLM.from_pretrained(str(base_model), **load_kw)
    if res["quantization"] == "nf4":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(res["gradient_checkpointing"])
        )
    return model, tok


def lora_config(config: FinetuneConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def sft_args(config: FinetuneConfig, res: dict[str, Any], work_dir: Path) -> Any:
    """TRL's ``SFTConfig``: the loss on the response only, seeded, no tqdm, no reports."""
    from trl import SFTConfig

    return SFTConfig(
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


@dataclass
class _Run:
    """A finished ``trainer.train()``: the model, its logged steps and the weight fingerprints."""

    model: Any
    trainer: Any
    result: Any
    steps: list[dict[str, Any]]
    seconds: float
    before: tuple[dict[str, Any], dict[str, Any]]  # (base, lora) fingerprints before training

    def stats(self) -> dict[str, Any]:
        state, steps = self.trainer.state, self.steps
        base_before, lora_before = self.before
        lora_after = _param_fingerprint(self.model, trainable=True)
        return {
            "optimizer_steps": int(state.global_step),
            "train_loss": float(self.result.training_loss),
            "losses": [r["loss"] for r in steps if "loss" in r],
            "eval_losses": [r["eval_loss"] for r in steps if "eval_loss" in r],
            "best_eval_loss": state.best_metric,
            "epochs_run": float(state.epoch or 0.0),
            "seconds": round(self.seconds, 3),
            "trainable_params": int(
                sum(p.numel() for p in self.model.parameters() if p.requires_grad)
            ),
            "lora_tensors_changed": sum(lora_before[k] != lora_after[k] for k in lora_before),
            "lora_tensors": len(lora_before),
            "base_weights_unchanged": base_before
            == _param_fingerprint(self.model, trainable=False),
        }


def _train(
    model: Any,
    tok: Any,
    args: Any,
    config: FinetuneConfig,
    train_pairs: list[dict[str, str]],
    val_pairs: list[dict[str, str]],
    log_path: Path | None,
    on_progress: Callable[[dict[str, Any]], None] | None,
) -> _Run:
    """``SFTTrainer`` over the pairs, each logged step appended to ``log_path`` as it comes."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTTrainer

    from selectllm_local.run.store import AppendLog, timed

    steps: list[dict[str, Any]] = []
    sink = AppendLog(log_path) if log_path is not None else None

    class _LogSteps(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
            if logs:
                row = {"step": state.global_step, "epoch": state.epoch, **logs}
                steps.append(row)
                log.info("step %d: %s", state.global_step, logs)
                if sink is not None:
                    sink.append(row)

    try:
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(train_pairs),
            eval_dataset=Dataset.from_list(val_pairs) if val_pairs else None,
            processing_class=tok,
            peft_config=lora_config(config),
            callbacks=[_LogSteps(), *early_stopping_callbacks(config), *_progress(on_progress)],
        )
        trainer.remove_callback(PrinterCallback)  # it prints to stdout; _LogSteps logs instead
        peft_model = trainer.model
        before = (
            _param_fingerprint(peft_model, trainable=False),
            _param_fingerprint(peft_model, trainable=True),
        )
        with timed() as clock:
            result = trainer.train()
    finally:
        if sink is not None:
            sink.close()
    return _Run(peft_model, trainer, result, steps, clock.wall, before)


def _progress(emit: Callable[[dict[str, Any]], None] | None) -> list[Any]:
    from selectllm_local.training.progress import step_callback

    return [step_callback(emit)] if emit is not None else []
