"""How many prompts the transformers backend puts in one batch on a GPU.

A fixed 16 left an H200 mostly idle on a 1.5B model (issue 10: 17.6 s in the engine, more than
an 8B model at batch 64). What bounds a batch is memory: each sequence holds its KV cache for
every layer, plus, during prefill, one layer's activations at a time (attention projections and
the MLP's gate/up/down, transient) and a row of logits. This sizes the batch from the free GPU
memory and the longest prompt, conservatively (measured on an H200: about 400 MB per 2,240-token
sequence for the Llama-3-8B shape, estimated here as 560 MB), and rounds to a multiple of 8.
On the CPU the batch stays at ``CPU_BATCH``: there it is compute, not memory, that limits.

Which prompts share a batch: ``bucket_by_length`` (similar lengths, bounded padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CPU_BATCH = 16
MAX_BATCH = 128  # beyond this, prefill throughput no longer grows (26.3k vs 25.0k tok/s at 64)


@dataclass(frozen=True)
class ModelMemory:
    """The few numbers of a model config that set its memory per token."""

    layers: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    dtype_bytes: int

    @classmethod
    def from_config(cls, config: Any, dtype_bytes: int) -> ModelMemory:
        hidden = int(config.hidden_size)
        heads = int(config.num_attention_heads)
        return cls(
            layers=int(config.num_hidden_layers),
            kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(config, "head_dim", None) or hidden // heads),
            hidden=hidden,
            intermediate=int(getattr(config, "intermediate_size", None) or 4 * hidden),
            vocab=int(config.vocab_size),
            dtype_bytes=dtype_bytes,
        )

    def bytes_per_sequence(self, tokens: int) -> int:
        kv = 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes
        activations = (4 * self.hidden + 3 * self.intermediate) * self.dtype_bytes
        logits = 4 * 4 * self.vocab  # float32 row, plus the copies sampling makes
        return tokens * (kv + activations) + logits


def gpu_batch_size(
    mem: ModelMemory,
    *,
    free_bytes: int,
    prompt_tokens: int,
    new_tokens: int,
    fraction: float = 0.8,
    cap: int = MAX_BATCH,
) -> int:
    """Largest batch whose sequences fit in ``fraction`` of ``free_bytes`` (1 to ``cap``)."""
    per_seq = mem.bytes_per_sequence(max(1, prompt_tokens + new_tokens))
    n = int(fraction * max(0, free_bytes) // per_seq)
    n = max(1, min(cap, n))
    return n - n % 8 if n > 8 else n


DEFAULT_MAX_PADDING = 0.04
# A batch split in two runs its decode steps twice. One decode step of a batch costs about as long
# as prefilling this many tokens (a 7B model on an H200: 26 ms a step against ~23k prompt
# tokens/s, ~600 tokens; float32 on a 2-core CPU, ~100), so padding below that is cheaper than a
# split.
DECODE_STEP_TOKENS = 256


def bucket_by_length(
    lengths: Sequence[int],
    max_batch: int,
    max_padding: float = DEFAULT_MAX_PADDING,
    new_tokens: int = 1,
) -> list[list[int]]:
    """Group indices into batches of similar length.

    Indices are sorted by length and a batch is closed when it is full or when adding the next
    (longer) prompt would pad it by more than ``max_padding`` x its real tokens plus
    ``DECODE_STEP_TOKENS`` per decode step after the first: with one new token (scoring,
    logprobs) the padding stays within ``max_padding``; with long answers (evaluation) splitting
    would repeat every decode step, and batches stay full.
    """
    allowance = DECODE_STEP_TOKENS * max(0, new_tokens - 1)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    total = 0
    for i in order:
        n = lengths[i]
        if cur:
            new_total = total + n
            padding = n * (len(cur) + 1) - new_total  # n is the new maximum (sorted)
            if len(cur) >= max_batch or padding > max_padding * new_total + allowance:
                batches.append(cur)
                cur, total = [], 0
        cur.append(i)
        total += n
    if cur:
        batches.append(cur)
    return batches
