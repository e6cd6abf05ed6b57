"""Fine-tuning: real LoRA and 4-bit NF4 QLoRA steps on a tiny Llama, on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selectllm_local.errors import UserError
from selectllm_local.training.finetune import (
    FinetuneConfig,
    finetune,
    train_lora,
    training_examples,
)
from tests.helpers import EXAMPLE_POOL, requires_gpu

RECORDS = [json.loads(x) for x in EXAMPLE_POOL.read_text().splitlines()[:12]]
SMALL = {"lora_r": 8, "max_steps": 3, "batch_size": 4, "grad_accum": 1, "max_length": 128}


@pytest.mark.parametrize(
    ("kw", "flag"),
    [
        ({"lora_r": 0}, "--lora-r"),
        ({"lora_dropout": 1.0}, "--lora-dropout"),
        ({"learning_rate": 0}, "--learning-rate"),
        ({"max_steps": 0}, "--max-steps"),
        ({"quantization": "int3"}, "--quantization"),
        ({"dtype": "fp8"}, "--dtype"),
        ({"batch_size": 1.5}, "--batch-size"),
    ],
)
def test_config_errors_name_the_flag(kw: dict, flag: str) -> None:
    with pytest.raises(UserError, match=flag):
        FinetuneConfig(**kw)


def test_paper_recipe_defaults() -> None:
    c = FinetuneConfig()
    assert (c.lora_r, c.lora_alpha, c.lora_dropout, c.learning_rate) == (64, 16, 0.1, 2e-4)
    assert c.quantization == "auto"


def test_unknown_config_key_is_named() -> None:
    with pytest.raises(UserError, match="lora_rank"):
        FinetuneConfig.from_mapping({"lora_rank": 8})


def test_missing_responses_fail_before_any_model_is_loaded(tmp_path: Path) -> None:
    records = [{"instruction": "a", "response": "b"}, {"instruction": "c"}]
    with pytest.raises(UserError, match="1 of 2 records .* no response"):
        # the base model does not exist: the response check must come first
        finetune(
            records,
            base_model=tmp_path / "nowhere",
            out_dir=tmp_path / "o",
            config=FinetuneConfig(),
        )


def test_selected_jsonl_rows_are_read_through_their_block() -> None:
    row = {"text": "x", "selectllm": {"instruction": "i", "input": "", "output": "o"}}
    assert training_examples([row]) == [{"instruction": "i", "input": "", "output": "o"}]


def _lora_tensors(model) -> dict:  # noqa: ANN001
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_lora_trains_adapter_only_and_reloads(tiny_llama_dir: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = FinetuneConfig(**SMALL, quantization="none", learning_rate=1e-2)
    model, tok, stats = train_lora(
        training_examples(RECORDS), base_model=tiny_llama_dir, config=cfg, work_dir=tmp_path / "w"
    )
    assert stats["optimizer_steps"] == 3 and len(stats["losses"]) == 3
    assert stats["lora_tensors_changed"] == stats["lora_tensors"] > 0
    assert stats["base_weights_unchanged"] is True
    lora = _lora_tensors(model)
    assert all(t.abs().sum() > 0 for n, t in lora.items() if "lora_B" in n)  # B starts at zero
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    trained_base = {
        n.replace("base_model.model.", "").replace(".base_layer", ""): p
        for n, p in model.named_parameters()
        if "lora_" not in n
    }
    for name, p in base.named_parameters():
        assert torch.equal(p, trained_base[name]), name  # frozen base weights did not move

    model.save_pretrained(tmp_path / "adapter")
    x = tok(["### Instruction:\nName a colour.\n\n### Response:\n"], return_tensors="pt")
    with torch.no_grad():
        want = model(**x).logits
        fresh = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
        got = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()(**x).logits
        plain = fresh.eval()
    torch.testing.assert_close(got, want)
    with torch.no_grad():
        assert not torch.allclose(
            AutoModelForCausalLM.from_pretrained(tiny_llama_dir)(**x).logits, want
        )
    del plain


def test_finetune_writes_adapter_config_and_log(tiny_llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ft"
    adapter = finetune(
        RECORDS, base_model=tiny_llama_dir, out_dir=out, config=FinetuneConfig(**SMALL)
    )
    assert adapter == out / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in adapter.iterdir()
    }
    conf = json.loads((out / "finetune_config.json").read_text())
    assert conf["config"]["lora_r"] == 8 and conf["resolved"]["quantization"] == "none"
    log_rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_rows if "loss" in r] == [1, 2, 3]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["examples"] == 12 and summary["base_weights_unchanged"]
    assert not (out / ".work").exists() and not (out / ".adapter.tmp").exists()


def test_qlora_nf4_on_cpu(tiny_llama_dir: Path, tmp_path: Path) -> None:
    import bitsandbytes as bnb

    cfg = FinetuneConfig(**SMALL, quantization="nf4", learning_rate=1e-2)
    model, _tok, stats = train_lora(
        training_examples(RECORDS), base_model=tiny_llama_dir, config=cfg, work_dir=tmp_path / "w"
    )
    assert stats["resolved"]["quantization"] == "nf4"
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and four_bit[0].weight.quant_state.quant_type == "nf4"
    assert stats["lora_tensors_changed"] == stats["lora_tensors"] > 0
    assert stats["base_weights_unchanged"] is True  # the 4-bit bytes included


def test_finetune_in_subprocess_alone_and_in_one_shared_process(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """A fresh process per job, or one process for many (an experiment's cells): the same adapter
    bytes either way; a user error comes back as UserError and the shared process lives on; a
    process killed between jobs is replaced."""
    import os
    import signal

    from selectllm_local.training.finetune import finetune_in_subprocess
    from selectllm_local.training.worker import shared_process

    cfg = FinetuneConfig(**{**SMALL, "max_steps": 1})
    other = FinetuneConfig(**{**SMALL, "max_steps": 1, "seed": 7})

    def train(out: str, config: FinetuneConfig = cfg) -> bytes:
        adapter = finetune_in_subprocess(
            RECORDS, base_model=tiny_llama_dir, out_dir=tmp_path / out, config=config
        )
        assert "fine-tuned" in (tmp_path / out / "finetune.log").read_text()
        return (adapter / "adapter_model.safetensors").read_bytes()

    alone = train("alone")
    with shared_process() as proc:
        seeded = train("other", other)  # another job first: its RNG use must not leak
        pid = proc.pid
        assert pid is not None
        with pytest.raises(UserError, match="does not exist"):
            finetune_in_subprocess(
                RECORDS, base_model=tmp_path / "missing", out_dir=tmp_path / "o", config=cfg
            )
        assert proc.pid == pid
        assert train("shared") == alone != seeded
        assert (proc.started, proc.jobs) == (1, 3)
        os.kill(pid, signal.SIGKILL)
        assert train("after-kill") == alone
        assert proc.started == 2 and proc.pid != pid
    assert proc.pid is None  # the block's end closed it


@pytest.mark.gpu
@requires_gpu
def test_qlora_auto_is_nf4_on_cuda(tiny_llama_dir: Path, tmp_path: Path) -> None:
    cfg = FinetuneConfig(**SMALL)  # quantization auto
    model, _tok, stats = train_lora(
        training_examples(RECORDS), base_model=tiny_llama_dir, config=cfg, work_dir=tmp_path / "w"
    )
    assert stats["resolved"] == {
        "device": "cuda",
        "quantization": "nf4",
        "dtype": stats["resolved"]["dtype"],
        "gradient_checkpointing": True,
    }
    assert (
        stats["lora_tensors_changed"] == stats["lora_tensors"] and stats["base_weights_unchanged"]
    )
    assert next(model.parameters()).device.type == "cuda"


def test_warmup_setting_matches_the_transformers_version() -> None:
    """transformers 4 would read a float warmup_steps as 0 steps: the ratio goes where it is read."""
    import transformers

    from selectllm_local.training.lora import warmup_kwargs

    assert warmup_kwargs(0.03, "4.57.1") == {"warmup_ratio": 0.03}
    assert warmup_kwargs(0.03, "5.19.0") == {"warmup_steps": 0.03}
    args = transformers.TrainingArguments(
        output_dir="unused", report_to="none", **warmup_kwargs(0.25)
    )
    assert args.get_warmup_steps(40) == 10  # a quarter of 40 steps, on the installed version


def test_validation_split_and_early_stopping_keep_the_best_epoch(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """The paper's recipe: 20% held out, up to N epochs, stop when validation loss stops falling."""
    with pytest.raises(UserError, match="--early-stopping-patience"):
        FinetuneConfig(early_stopping_patience=2)  # no validation split to stop on
    cfg = FinetuneConfig(
        lora_r=8, batch_size=4, grad_accum=1, max_length=128, quantization="none",
        epochs=20, learning_rate=0.5,  # far too high: validation loss soon climbs
        val_fraction=0.2, early_stopping_patience=1,
    )  # fmt: skip
    _model, _tok, stats = train_lora(
        training_examples(RECORDS), base_model=tiny_llama_dir, config=cfg, work_dir=tmp_path / "w"
    )
    assert (stats["train_examples"], stats["val_examples"]) == (9, 2)  # 11 fit in 128 tokens
    evals = stats["eval_losses"]
    assert 2 <= len(evals) < 20 and stats["epochs_run"] < 20  # stopped early
    assert stats["best_eval_loss"] == min(evals)
    assert evals[-1] > min(evals)  # the last epoch was worse; the kept adapter is the best one's


def test_early_stopping_threshold_counts_small_gains_as_none(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """The official code's threshold: a validation-loss fall of at most the threshold is no
    improvement. The same run that keeps improving by small steps stops after `patience` epochs
    once the threshold exceeds every fall."""
    with pytest.raises(UserError, match="--early-stopping-threshold"):
        FinetuneConfig(early_stopping_threshold=-0.1)

    def run(threshold: float, name: str) -> dict:
        cfg = FinetuneConfig(
            lora_r=8, batch_size=4, grad_accum=1, max_length=128, quantization="none",
            epochs=4, learning_rate=1e-3, val_fraction=0.2, early_stopping_patience=1,
            early_stopping_threshold=threshold,
        )  # fmt: skip
        examples = training_examples(RECORDS)
        return train_lora(
            examples, base_model=tiny_llama_dir, config=cfg, work_dir=tmp_path / name
        )[2]

    plain = run(0.0, "plain")
    evals = plain["eval_losses"]
    assert plain["epochs_run"] == 4 and all(b < a for a, b in zip(evals, evals[1:], strict=False))
    strict = run(10.0, "strict")  # no fall of the tiny model's loss is anywhere near 10
    assert strict["epochs_run"] == 2 and len(strict["eval_losses"]) == 2
