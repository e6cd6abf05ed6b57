"""Reference NLL: the mean per-token negative log-likelihood of each test row's reference answer
under the fine-tuned model (base + adapter), with teacher forcing.

Why beside Rouge-L and cosine: those score a generated answer, so they cost a decode per token and
carry the noise of one greedy answer per row. The reference's likelihood needs one forward pass
per row and moves smoothly with what the model learned, so it tells methods apart on fewer rows.

A row is tokenised as training tokenises it (TRL's prompt-completion format): the ids of
``prompt + reference + EOS``, the response starting where they part from the ids of the prompt
alone. Only those response tokens (the EOS included: stopping is part of the answer) are scored,
at most ``max_tokens`` of them (a longer reference is scored on its start). The prompt is the one
the evaluation answers (``testset.fit_prompts``: the Alpaca prompt, a long input cut).

Batches are rows of similar length, padded on the left with explicit position ids, so every row
sees the positions it would see alone; the model keeps logits only for the last ``r + 1``
positions (``r``: the batch's longest scored response), which bounds memory by the vocabulary
times the response length rather than the whole sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

LOGIT_BUDGET = 1 << 27  # floats of logits one batch may hold (512 MiB in float32)


@dataclass(frozen=True)
class RowNLL:
    nll: float
    """Mean negative log-likelihood per scored token, in nats."""
    tokens: int
    """Response tokens scored (EOS included unless the reference was cut)."""


def encode(prompt: str, reference: str, tok: Any, max_tokens: int) -> tuple[list[int], int]:
    """(ids, n_prompt): prompt + reference + EOS as training tokenises it, cut after
    ``max_tokens`` response tokens; the response is ``ids[n_prompt:]`` (never empty)."""
    prompt_ids = tok(prompt)["input_ids"]
    whole = tok(prompt + reference + (tok.eos_token or ""))["input_ids"]
    n = 0
    for a, b in zip(prompt_ids, whole, strict=False):
        if a != b:
            break
        n += 1
    n = max(1, min(n, len(whole) - 1))  # one token of context and one to score, at least
    return whole[: n + max_tokens], n


def _batches(
    lengths: Sequence[int], scored: Sequence[int], size: int, vocab: int
) -> list[list[int]]:
    """Rows grouped by total length (shortest first), at most ``size`` per batch and at most
    ``LOGIT_BUDGET`` kept logits (rows x (longest response + 1) x vocab)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    out: list[list[int]] = []
    batch: list[int] = []
    widest = 0
    for i in order:
        w = max(widest, scored[i] + 1)
        if batch and (len(batch) >= size or (len(batch) + 1) * w * vocab > LOGIT_BUDGET):
            out.append(batch)
            batch, w = [], scored[i] + 1
        batch.append(i)
        widest = w
    if batch:
        out.append(batch)
    return out


def reference_nll(
    model: Any,
    tok: Any,
    prompts: Sequence[str],
    references: Sequence[str],
    *,
    batch_size: int = 16,
    max_tokens: int = 256,
    on_batch: Callable[[int], None] | None = None,
) -> list[RowNLL]:
    """Mean per-token NLL of each reference given its prompt (see the module docstring)."""
    import torch

    if len(prompts) != len(references):
        raise ValueError("prompts and references differ in length")
    encoded = [encode(p, r, tok, max_tokens) for p, r in zip(prompts, references, strict=True)]
    scored = [len(ids) - n for ids, n in encoded]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device = next(model.parameters()).device
    vocab = int(model.get_output_embeddings().weight.shape[0])
    out: list[RowNLL | None] = [None] * len(encoded)
    with torch.inference_mode():
        for batch in _batches([len(e[0]) for e in encoded], scored, batch_size, vocab):
            width = max(len(encoded[i][0]) for i in batch)
            keep = max(scored[i] for i in batch) + 1
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for j, i in enumerate(batch):
                row = encoded[i][0]
                ids[j, width - len(row) :] = torch.tensor(row, dtype=torch.long)
                mask[j, width - len(row) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = (
                model(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    position_ids=positions.to(device),
                    logits_to_keep=keep,
                )
                .logits[:, :-1]
                .float()
            )  # predictions of the last keep - 1 tokens
            target = ids[:, width - keep + 1 :].to(device)
            nll = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), target, reduction="none"
            ).cpu()
            for j, i in enumerate(batch):
                r = scored[i]
                out[i] = RowNLL(float(nll[j, keep - 1 - r :].double().mean()), r)
            if on_batch is not None:
                on_batch(len(batch))
    return [o for o in out if o is not None]
