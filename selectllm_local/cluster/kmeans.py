"""Balanced clusters: FAISS k-means, then the paper's greedy round-robin balancing.

Why balanced: the diverse layout puts the p-th member of every cluster into subset p, so each
prompt shows one candidate per region of the embedding space. That only covers the whole pool when
all clusters have the same size (here: sizes differ by at most one; the last round is short). The
balancing itself is :mod:`~selectllm_local.cluster.balance`; this module trains the centroids
(on the GPU when FAISS has one) and chains the two (:func:`balanced_clusters`).

K is the number of candidates in one diverse prompt, so it is capped (:data:`DEFAULT_MAX_K`): the
paper's rule of about N/1000 clusters would put 1,000 candidates into one prompt for a 1M pool.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from selectllm_local.cluster.balance import as_f32 as _as_f32
from selectllm_local.cluster.balance import balance
from selectllm_local.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_MAX_K = 32
"""Cap on K (= candidates shown in one diverse prompt). 32 candidates of ~60-250 tokens each keep
a prompt within ~2-8k tokens, which small local models still read reliably."""

DEFAULT_NITER = 10
"""k-means iterations. The centroids only seed the balancing, which moves points anyway; 10
iterations keep 1M x 384 with k=1000 at ~35 CPU-seconds (FAISS trains on 256 points per
centroid), where FAISS's default of 25 would cost 2.5 times that."""

KMEANS_SAMPLE = 65536
"""k-means trains on at least this many points (all of a smaller pool) and at least 128 per
centroid: a 1M pool with k=1000 trains on 128k points, half of FAISS's default 256 per centroid,
because the centroids only seed the balancing."""

POOL_PER_CLUSTER = 1000
"""The paper's rule: about one cluster per 1,000 pool items (14 for Dolly, 51 for Alpaca)."""


def choose_k(n: int, *, max_k: int = DEFAULT_MAX_K) -> int:
    """K for a pool of ``n`` items: round(n / 1000), at least 2, at most ``max_k`` and ``n``."""
    if n < 1:
        raise UserError("The pool is empty: there is nothing to cluster.")
    if max_k < 2:
        raise UserError(f"--max-k must be at least 2 (got {max_k}): a prompt needs two candidates.")
    k = max(2, round(n / POOL_PER_CLUSTER))
    return max(1, min(k, max_k, n))


def _faiss() -> Any:
    from selectllm_local.errors import require

    return require("faiss", feature="Clustering")


def faiss_gpus() -> int:
    """Number of GPUs the installed FAISS build can use (0 for faiss-cpu)."""
    faiss = _faiss()
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def kmeans_device(gpus: int | None = None) -> str:
    """Where k-means trains: ``"cuda:0"`` when the installed FAISS sees a GPU, else ``"cpu"``.

    ``gpus`` overrides the count FAISS reports (tests inject it). One GPU is used even when there
    are several: the centroids only seed the balancing, and one GPU trains 1M x 384 in seconds.
    """
    n = faiss_gpus() if gpus is None else gpus
    return "cuda:0" if n > 0 else "cpu"


def _gpu_flat_index(faiss: Any, d: int, *, spherical: bool, device: int) -> Any:
    """An exact (flat) FAISS index on GPU ``device``, the one k-means assigns points with."""
    res = faiss.StandardGpuResources()
    cfg = faiss.GpuIndexFlatConfig()
    cfg.device = device
    cls = faiss.GpuIndexFlatIP if spherical else faiss.GpuIndexFlatL2
    index = cls(res, d, cfg)
    index.selectllm_resources = res  # keep the GPU memory pool alive as long as the index
    return index


def train_centroids(
    emb: np.ndarray,
    k: int,
    *,
    seed: int,
    niter: int = DEFAULT_NITER,
    spherical: bool = False,
    max_points_per_centroid: int | None = None,
    device: str | None = None,
) -> np.ndarray:
    """k-means centroids (k, d), seeded; on GPU when the installed FAISS has GPUs.

    FAISS trains on a seeded sample of ``max_points_per_centroid * k`` points (default: see
    :data:`KMEANS_SAMPLE`), which keeps a 1M-point pool at seconds rather than minutes.
    ``device`` is ``"cpu"`` or ``"cuda:N"`` (default: :func:`kmeans_device`). Only the index
    that assigns points to centroids moves to the GPU; the sample, the initial centroids and
    the iterations are FAISS's own, so the same seed draws the same sample on both devices
    (the centroids can differ in the last bits: GPU and CPU sum in different orders).
    """
    x = _as_f32(emb)
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of points ({n}), got {k}")
    if k == 1:
        return x.mean(axis=0, keepdims=True)
    faiss = _faiss()
    device = device or kmeans_device()
    km = faiss.Kmeans(
        d,
        k,
        niter=niter,
        seed=seed,
        spherical=spherical,
        verbose=False,
        max_points_per_centroid=max_points_per_centroid or max(128, -(-KMEANS_SAMPLE // k)),
        min_points_per_centroid=1,  # small pools are fine; silences FAISS's stderr warning
    )
    if device != "cpu":
        gpu = int(device.partition(":")[2] or 0)
        km.index = _gpu_flat_index(faiss, d, spherical=spherical, device=gpu)
    km.train(x)
    log.debug("k-means: %d points, k=%d, %d iterations, on %s", n, k, niter, device)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def kmeans(
    emb: np.ndarray, k: int, *, seed: int, niter: int = DEFAULT_NITER, spherical: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Plain (unbalanced) k-means: ``(centroids (k, d), labels (n,))`` with nearest-centroid labels."""
    x = _as_f32(emb)
    centroids = train_centroids(x, k, seed=seed, niter=niter, spherical=spherical)
    _, nearest = _faiss().knn(x, centroids, 1)
    return centroids, nearest[:, 0].astype(np.int32)


def balanced_clusters(
    emb: np.ndarray, k: int, *, seed: int, niter: int = DEFAULT_NITER, device: str | None = None
) -> np.ndarray:
    """k-means then greedy balancing: cluster label (int32) per row, sizes differ by at most 1.

    k-means runs on ``device`` (default :func:`kmeans_device`: the GPU when FAISS has one); the
    balancing is the same exact greedy loop on either, so the size guarantee does not depend on it.
    """
    x = _as_f32(emb)
    centroids = train_centroids(x, k, seed=seed, niter=niter, device=device)
    return balance(x, centroids)


def cluster_sizes(labels: np.ndarray, k: int | None = None) -> np.ndarray:
    """Members per cluster id."""
    labels = np.asarray(labels)
    return np.bincount(labels, minlength=k or (int(labels.max()) + 1 if len(labels) else 0))
