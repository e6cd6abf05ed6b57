"""Perplexity scores of pool instructions under a local causal LM (the perplexity baselines).

``perplexities``: of the instruction text itself (``instruction-perplexity``).
``answer_perplexities``: of the base model's own greedy answer to each instruction (the paper's
``answer-perplexity``). Both load the model once, score in length-sorted batches and run in
float32 on a CPU (``hardware.resolve_dtype``), bf16/fp16 on a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selectllm_local import hardware
from selectllm_local.errors import UserError
from selectllm_local.records import PoolItem

ANSWER_TOKENS = 128  # answer-perplexity: tokens of the base model's greedy answer scored


def perplexities(
    texts: list[str],
    model_path: str,
    *,
    batch_size: int = 16,
    max_length: int = 256,
    device: str | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Per-text perplexity under a local causal LM (batched by length, right padding)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selectllm_local.models.registry import resolve_model_path

    model_path = resolve_model_path(model_path, flag="--scorer-model")  # .gguf / known name
    if not Path(model_path).exists():
        raise UserError(
            f"--scorer-model {model_path} does not exist; give a local model directory."
        )
    dev = hardware.default_device(device)
    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    dtype = getattr(torch, hardware.resolve_dtype("auto", dev, cpu_auto="float32"))
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(dev).eval()
    enc = [
        tok(t, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
        for t in texts
    ]
    order = np.argsort([len(e) for e in enc], kind="stable")
    out = np.zeros(len(texts), dtype=np.float64)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    from selectllm_local.progress import progress_bar

    with (
        torch.inference_mode(),
        progress_bar("perplexity", total=len(texts), enabled=progress) as advance,
    ):
        for batch in batches:
            rows = [enc[i] for i in batch]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, r in enumerate(rows):
                ids[j, : len(r)] = torch.tensor(r)
                mask[j, : len(r)] = 1
            ids, mask = ids.to(dev), mask.to(dev)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = ids[:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), target, reduction="none"
            )
            m = mask[:, 1:].float()
            mean_nll = (nll * m).sum(1) / m.sum(1).clamp(min=1)
            out[batch] = torch.exp(mean_nll).cpu().numpy()
            advance(len(batch))
    del model
    return out


def answer_perplexities(
    items: Sequence[PoolItem],
    model_path: str,
    *,
    batch_size: int = 16,
    answer_tokens: int = ANSWER_TOKENS,
    max_prompt_tokens: int = 256,
    device: str | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Perplexity of the model's own greedy answer to each instruction (the paper's baseline).

    Each instruction is put in the training prompt (``trainset.render_prompt``, a long input cut
    as in evaluation), the model answers greedily (``answer_tokens`` at most), and the answer's
    tokens, as generated (not re-tokenised), plus the end-of-text token are scored given the
    prompt. An empty answer scores the end token alone: the model's surprise at stopping at once.
    """
    import torch
    from rich.progress import track
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selectllm_local.evaluation.testset import TestExample, fit_prompts
    from selectllm_local.models.registry import resolve_model_path

    model_path = resolve_model_path(model_path, flag="--scorer-model")  # .gguf / known name
    if not Path(model_path).exists():
        raise UserError(
            f"--scorer-model {model_path} does not exist; give a local model directory."
        )
    tok = AutoTokenizer.from_pretrained(model_path)
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    examples = [TestExample(it.instruction, it.input, "") for it in items]
    prompts = [tok(p)["input_ids"] for p in fit_prompts(examples, tok, max_prompt_tokens)]
    dev = hardware.default_device(device)
    dtype = getattr(torch, hardware.resolve_dtype("auto", dev, cpu_auto="float32"))
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(dev).eval()

    def padded(rows: list[list[int]], left: bool) -> tuple[Any, Any]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            sl = slice(width - len(r), width) if left else slice(0, len(r))
            ids[j, sl], mask[j, sl] = torch.tensor(r), 1
        return ids.to(dev), mask.to(dev)

    answers: list[list[int]] = [[] for _ in prompts]
    order = np.argsort([len(p) for p in prompts], kind="stable")
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    out = np.zeros(len(prompts), dtype=np.float64)
    with torch.inference_mode():
        for batch in track(batches, description="base-model answers", disable=not progress):
            ids, mask = padded([prompts[i] for i in batch], left=True)
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=answer_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=eos,
            )[:, ids.shape[1] :].tolist()
            for j, i in enumerate(batch):
                row = gen[j]
                answers[i] = row[: row.index(eos)] if eos in row else row
        for batch in track(batches, description="answer perplexity", disable=not progress):
            seqs = [prompts[i] + answers[i] + [eos] for i in batch]
            ids, mask = padded(seqs, left=False)
            scored = torch.zeros_like(mask, dtype=torch.float32)  # answer positions only
            for j, i in enumerate(batch):
                scored[j, len(prompts[i]) : len(seqs[j])] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), ids[:, 1:], reduction="none"
            )
            m = scored[:, 1:]
            out[batch] = torch.exp((nll * m).sum(1) / m.sum(1)).cpu().numpy()
    del model
    return out
