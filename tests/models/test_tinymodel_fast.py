"""The fast random init of large shapes: seeded, model-like values, tied weights kept.

Large shapes skip transformers' per-module init (minutes on a CPU for 1.5B parameters); the
function is exercised here on a small config so the test stays cheap. Tiny shapes keep the
default init, bit for bit (their saved weights must not change: golden selections use them).
"""

from __future__ import annotations

import torch
from transformers import AutoConfig

from selectllm_local.models import random_weights as tinymodel


def _config(tied: bool) -> object:
    spec = dict(tinymodel.SHAPES["tiny-qwen2"])
    model_type = spec.pop("model_type")
    spec.update(vocab_size=5000, tie_word_embeddings=tied, hidden_size=128, intermediate_size=256)
    return AutoConfig.for_model(model_type, **spec)


def test_fast_init_is_seeded_and_model_like() -> None:
    a = tinymodel._fast_random_model(_config(True), torch.bfloat16, seed=3)
    b = tinymodel._fast_random_model(_config(True), torch.bfloat16, seed=3)
    c = tinymodel._fast_random_model(_config(True), torch.bfloat16, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])
    for name, p in a.named_parameters():
        assert p.dtype == torch.bfloat16 and p.device.type == "cpu" and torch.isfinite(p).all()
        if name.endswith("bias"):
            assert not p.any()
        elif p.dim() == 1:
            assert (p == 1).all()
        else:
            assert 0.015 < p.float().std().item() < 0.025  # initializer_range 0.02
    emb = a.model.embed_tokens.weight
    assert a.lm_head.weight.data_ptr() == emb.data_ptr()  # tied weights stay tied
    assert not torch.equal(emb[0], emb[1])  # rows differ (the fill pool is not row-aligned)
    logits = a(torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()


def test_untied_head_gets_its_own_values() -> None:
    m = tinymodel._fast_random_model(_config(False), torch.float32, seed=0)
    assert m.lm_head.weight.data_ptr() != m.model.embed_tokens.weight.data_ptr()
    assert not torch.equal(m.lm_head.weight, m.model.embed_tokens.weight)
