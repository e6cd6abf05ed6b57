"""Perplexity scores of pool instructions under a local causal LM (the perplexity baselines).

``perplexities``: of the instruction text itself (``instruction-perplexity``).
``answer_perplexities``: of the base model's own greedy answer to each instruction (the paper's
``answer-perplexity``), generated and scored on a ``backends`` engine. Both load the model once,
score in length-sorted batches and run in float32 on a CPU (``hardware.resolve_dtype``), bf16/fp16
on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from selectllm_local import hardware
from selectllm_local.baselines.request import Request, top
from selectllm_local.config.vocab import PERPLEXITY_BANDS, BackendName
from selectllm_local.errors import UserError
from selectllm_local.progress import quiet_weight_bars
from selectllm_local.records import PoolItem

ANSWER_TOKENS = 128  # answer-perplexity: tokens of the base model's greedy answer scored


def perplexity_pick(req: Request) -> np.ndarray:
    """``answer-perplexity`` / ``instruction-perplexity``: the rows in ``band`` (high | low |
    middle) of the scorer's perplexities. Options: ``band``, ``batch_size``, ``max_length``,
    ``answer_tokens``, ``progress``."""
    opts = req.opts
    band = opts.get("band", "high")
    if band not in PERPLEXITY_BANDS:
        raise UserError(f"--band must be one of {', '.join(PERPLEXITY_BANDS)} (got '{band}').")
    if req.scorer is None:
        raise UserError(
            "The perplexity baselines need a scoring model: give --scorer-model PATH (a local "
            "causal LM, normally the base model to be fine-tuned)."
        )
    batch_size, max_length = int(opts.get("batch_size", 16)), int(opts.get("max_length", 256))
    progress = bool(opts.get("progress", True))
    texts = [f"{it.instruction}\n{it.input}".strip() for it in req.items]
    if callable(req.scorer):
        ppl = np.asarray(req.scorer(texts), dtype=np.float64)
    elif req.name == "answer-perplexity":
        ppl = answer_perplexities(
            req.items,
            str(req.scorer),
            batch_size=batch_size,
            answer_tokens=int(opts.get("answer_tokens", ANSWER_TOKENS)),
            max_prompt_tokens=max_length,
            progress=progress,
        )
    else:
        ppl = perplexities(
            texts, str(req.scorer), batch_size=batch_size, max_length=max_length, progress=progress
        )
    if band == "high":
        key = -ppl
    elif band == "low":
        key = ppl
    else:  # closest to the median
        key = np.abs(ppl - np.median(ppl))
    return top(key, req.budget, req.rng)


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
    with quiet_weight_bars(model_path):
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    model = model.to(dev).eval()
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
    backend: BackendName = "transformers",
) -> np.ndarray:
    """Perplexity of the model's own greedy answer to each instruction (the paper's baseline).

    Each instruction is put in the training prompt (``trainset.render_prompt``, a long input cut
    as in evaluation), the model answers greedily (``answer_tokens`` at most), and the answer's
    tokens, as generated (not re-tokenised), plus the end-of-text token are scored given the
    prompt. An empty answer scores the end token alone: the model's surprise at stopping at once.
    Both passes run on a ``backends`` engine (``backend``: its batching, progress and offline
    rules): ``generate`` for the answers, ``token_logprobs`` (one prefill each) for the scores.
    """
    from selectllm_local.backends import load_backend
    from selectllm_local.backends.base import TokenizedPrompt
    from selectllm_local.config import EngineConfig
    from selectllm_local.evaluation.testset import TestExample, fit_prompts
    from selectllm_local.models.registry import resolve_model_path

    model_path = resolve_model_path(model_path, flag="--scorer-model")  # .gguf / known name
    if not Path(model_path).exists():
        raise UserError(
            f"--scorer-model {model_path} does not exist; give a local model directory."
        )
    dev = hardware.default_device(device)
    options = EngineConfig(
        backend=backend,
        device=dev,
        dtype=hardware.resolve_dtype("auto", dev, cpu_auto="float32"),
        batch_size=batch_size,
        max_model_len=max_prompt_tokens + answer_tokens + 8,
    )
    engine = load_backend(backend, model_path, options, offline=True)  # a checked local folder
    try:
        tok = engine.tokenizer
        eos = int(tok.eos_token_id)
        examples = [TestExample(it.instruction, it.input, "") for it in items]
        texts = fit_prompts(examples, tok, max_prompt_tokens)
        prompts = [list(tok(p)["input_ids"]) for p in texts]  # with the BOS the model expects
        gens = engine.generate(
            [TokenizedPrompt(t, ids) for t, ids in zip(texts, prompts, strict=True)],
            max_tokens=answer_tokens,
            progress=progress,
        )
        answers = []
        for g in gens:
            ids = list(g.token_ids or [])
            answers.append(ids[: ids.index(eos)] if eos in ids else ids)
        seqs = [p + a + [eos] for p, a in zip(prompts, answers, strict=True)]
        logps = engine.token_logprobs(seqs, [len(p) for p in prompts], progress=progress)
    finally:
        engine.close()
    return np.array([math.exp(-sum(lp) / len(lp)) for lp in logps], dtype=np.float64)
