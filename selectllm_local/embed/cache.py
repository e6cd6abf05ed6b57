"""The pool's embeddings cache: reuse rows already embedded, embed the rest here or on Ray.

Apart from ``encoder`` so that the Ray path (``ray_encode``, which reuses the encoder's model
resolution and batching) and the local path are both below the one function that chooses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from selectllm_local.embed import encoder
from selectllm_local.embed.encoder import (
    CACHE_FILE,
    CACHE_KEY_FILE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_EMBEDDER,
    model_id,
)
from selectllm_local.records import text_hash
from selectllm_local.run.store import RunStore, read_json, save_npy, stable_hash, write_json

log = logging.getLogger(__name__)


class EmbeddingCache:
    """``embeddings.npy`` + ``embeddings.key.json`` (model id and one text hash per row)."""

    def __init__(self, store: RunStore) -> None:
        self.npy = store.path(CACHE_FILE)
        self.key = store.path(CACHE_KEY_FILE)

    def load(self, model: str) -> tuple[list[str], np.ndarray] | None:
        """(hashes, embeddings) cached for ``model``, or None if absent, stale or damaged."""
        if not (self.npy.exists() and self.key.exists()):
            return None
        try:
            key = read_json(self.key)
            arr = np.load(self.npy, mmap_mode="r")
        except (OSError, ValueError) as exc:
            log.warning("ignoring damaged embedding cache in %s: %s", self.npy.parent, exc)
            return None
        hashes = key.get("hashes", [])
        if key.get("model") != model or arr.ndim != 2 or len(arr) != len(hashes):
            return None
        return hashes, arr

    def save(self, model: str, hashes: list[str], emb: np.ndarray) -> None:
        """Write atomically; the key goes last, so a crash in between leaves no valid cache."""
        self.key.unlink(missing_ok=True)
        save_npy(self.npy, emb)
        digest = stable_hash([model, hashes])  # one string that changes with model or any row
        write_json(
            self.key,
            {"model": model, "dim": int(emb.shape[1]), "digest": digest, "hashes": hashes},
        )


def load_or_embed(
    store: RunStore,
    texts: Sequence[str],
    *,
    model: str = DEFAULT_EMBEDDER,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | None = None,
    progress: bool = True,
    offline: bool = False,
    ray_address: str | None = None,
) -> tuple[np.ndarray, bool]:
    """Embeddings of ``texts``, reusing every cached row whose text hash matches.

    Returns ``(embeddings, cached)`` where ``cached`` is True when nothing had to be embedded.
    With ``ray_address`` the missing rows are embedded with Ray Data on that cluster
    (``embedding_ray``); the cache files are the same.
    """
    mid = model_id(model)
    hashes = [text_hash(t) for t in texts]
    cache = EmbeddingCache(store)
    old = cache.load(mid)
    rows: dict[str, int] = {}
    if old is not None:
        rows = {h: i for i, h in enumerate(old[0])}
    missing = [i for i, h in enumerate(hashes) if h not in rows]
    if old is not None and not missing and old[0] == hashes:
        log.info("embeddings: all %d rows from the cache (%s)", len(texts), cache.npy)
        return np.asarray(old[1], dtype=np.float32), True
    new = None
    if missing or old is None:
        todo = [texts[i] for i in missing]
        opts: dict[str, Any] = dict(
            model=model, batch_size=batch_size, device=device, progress=progress, offline=offline
        )
        if ray_address is not None:
            from selectllm_local.embed.ray_encode import embed_texts_ray

            new = embed_texts_ray(todo, address=ray_address, **opts)
        else:
            new = encoder.embed_texts(todo, **opts)
    dim = old[1].shape[1] if old is not None else new.shape[1]  # type: ignore[union-attr]
    emb = np.empty((len(texts), dim), dtype=np.float32)
    if missing and new is not None:
        emb[missing] = new
    if old is not None:
        have = [i for i, h in enumerate(hashes) if h in rows]
        emb[have] = old[1][[rows[hashes[i]] for i in have]]
    log.info(
        "embeddings: %d rows reused from the cache, %d embedded", len(texts) - len(missing),
        len(missing),
    )  # fmt: skip
    cache.save(mid, hashes, emb)
    return emb, not missing
