"""Sizing the transformers backend's GPU batch from free memory and prompt length (pure logic)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from selectllm_local.backends.batchsize import MAX_BATCH, ModelMemory, gpu_batch_size
from selectllm_local.models.random_weights import SHAPES

GIB = 2**30


def _mem(shape: str) -> ModelMemory:
    return ModelMemory.from_config(SimpleNamespace(**SHAPES[shape]), dtype_bytes=2)


def test_llama3_8b_per_sequence_estimate_bounds_the_h200_measurement() -> None:
    # Measured (issue 10, H200): 41.7 GB peak at batch 64 with ~2,240-token prompts, of which
    # ~16 GB are weights: ~400 MB per sequence. The estimate must not be below it.
    per_seq = _mem("llama-3-8b").bytes_per_sequence(2240 + 8)
    assert 400e6 <= per_seq <= 800e6


def test_batch_grows_with_free_memory_and_shrinks_with_prompt_length() -> None:
    mem = _mem("llama-3-8b")
    small = gpu_batch_size(mem, free_bytes=20 * GIB, prompt_tokens=2240, new_tokens=8)
    big = gpu_batch_size(mem, free_bytes=120 * GIB, prompt_tokens=2240, new_tokens=8)
    longer = gpu_batch_size(mem, free_bytes=120 * GIB, prompt_tokens=8000, new_tokens=8)
    assert 8 <= small < big <= MAX_BATCH and longer < big
    assert big % 8 == 0 and small % 8 == 0
    # It fits: the chosen batch uses at most 80% of what is free.
    assert big * mem.bytes_per_sequence(2248) <= 0.8 * 120 * GIB


@pytest.mark.parametrize("free", [0, 1, 10 * 2**20])
def test_never_below_one(free: int) -> None:
    assert (
        gpu_batch_size(_mem("qwen2.5-7b"), free_bytes=free, prompt_tokens=4000, new_tokens=8) == 1
    )


def test_small_models_hit_the_cap_and_the_cap_is_respected() -> None:
    mem = _mem("qwen2.5-0.5b")
    assert gpu_batch_size(mem, free_bytes=130 * GIB, prompt_tokens=2000, new_tokens=8) == MAX_BATCH
    assert gpu_batch_size(mem, free_bytes=130 * GIB, prompt_tokens=2000, new_tokens=8, cap=40) == 40


def test_gqa_and_head_dim_come_from_the_config() -> None:
    cfg = SimpleNamespace(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                          num_hidden_layers=32, intermediate_size=14336, vocab_size=128256)  # fmt: skip
    mem = ModelMemory.from_config(cfg, dtype_bytes=2)
    assert (mem.kv_heads, mem.head_dim) == (8, 128)
    mha = ModelMemory.from_config(SimpleNamespace(**{**vars(cfg), "num_key_value_heads": None}), 2)
    assert mha.kv_heads == 32 and mha.bytes_per_sequence(100) > mem.bytes_per_sequence(100)
