"""Balanced clusters: FAISS k-means, then the paper's greedy round-robin balancing.

Why balanced: the diverse layout puts the p-th member of every cluster into subset p, so each
prompt shows one candidate per region of the embedding space. That only covers the whole pool when
all clusters have the same size (here: sizes differ by at most one; the last round is short).

The paper balances greedily: for round 1, 2, ... each cluster in turn takes its nearest still
unassigned point. Done literally (every cluster scans every point every round) that is
O(N^2 d / K) work, hours at a million points. :func:`balance` computes the same assignment from
short candidate lists: one FAISS k-NN search gives every centroid its M nearest points; a pointer
per cluster walks its list past points that others already took, and a list that runs low is
refilled with a fresh search restricted (by a FAISS ID selector) to the unassigned points. Because
a list always holds the nearest unassigned points of its centroid in distance order, the result is
the literal greedy loop's (up to exact distance ties), at O(N d K) for the one search plus O(N)
Python steps.

K is the number of candidates in one diverse prompt, so it is capped (:data:`DEFAULT_MAX_K`): the
paper's rule of about N/1000 clusters would put 1,000 candidates into one prompt for a 1M pool.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

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


def _as_f32(emb: np.ndarray) -> np.ndarray:
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be 2-D, got shape {emb.shape}")
    return np.ascontiguousarray(emb, dtype=np.float32)


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


class _Searcher:
    """The m nearest points of some centroids, among all points or only the unassigned ones.

    Points are scanned in chunks. One BLAS product per chunk yields, for every (query, point),
    ``q.x - |x|^2 / 2`` (the norm rides along as an extra column), which ranks points exactly like
    the squared distance ``|q|^2 - 2 q.x + |x|^2``; one comparison with each query's current m-th
    best drops everything that can no longer enter its list, and the few survivors go into a
    (queries x 2m) buffer that is cut back to the best m when it fills. On two cores this is
    several times faster than FAISS's per-query heaps (``faiss.knn`` with few queries over many
    points), and it needs only chunk-sized scratch memory.
    """

    CHUNK = 4096

    def __init__(self, x: np.ndarray, free: np.ndarray) -> None:
        self.x = x
        self.free = free  # uint8 flags shared with the balancing loop: 1 = not yet assigned
        self.half_norms = 0.5 * np.einsum("ij,ij->i", x, x)
        self.searches = 0

    def nearest(self, queries: np.ndarray, m: int, *, only_free: bool) -> list[np.ndarray]:
        """Per query, the ids of its min(m, points) nearest points, nearest first."""
        self.searches += 1
        n, d = self.x.shape
        q_aug = np.empty((len(queries), d + 1), dtype=np.float32)
        q_aug[:, :d] = queries
        q_aug[:, d] = -1.0
        free_ids = np.flatnonzero(self.free[:n]) if only_free else None
        total = n if free_ids is None else len(free_ids)
        buf = _TopBuffer(len(queries), min(m, total))
        x_aug = np.empty((self.CHUNK, d + 1), dtype=np.float32)
        for s in range(0, total, self.CHUNK):
            e = min(total, s + self.CHUNK)
            rows = np.arange(s, e) if free_ids is None else free_ids[s:e]
            xa = x_aug[: e - s]
            if free_ids is None:
                xa[:, :d] = self.x[s:e]
                xa[:, d] = self.half_norms[s:e]
            else:
                xa[:, :d] = self.x[rows]
                xa[:, d] = self.half_norms[rows]
            buf.add(q_aug @ xa.T, rows)  # (queries, chunk) scores: higher = nearer
        return buf.result()


class _TopBuffer:
    """Running m highest scores per query (ties keep the earlier, i.e. lower, point id)."""

    def __init__(self, nq: int, m: int) -> None:
        self.m = m
        self.cap = 2 * m
        self.s = np.full((nq, self.cap), -np.inf, dtype=np.float32)
        self.i = np.full((nq, self.cap), -1, dtype=np.int64)
        self.cnt = np.zeros(nq, dtype=np.int64)
        self.tau = np.full(nq, -np.inf, dtype=np.float32)  # accept only score > tau

    def add(self, score: np.ndarray, rows: np.ndarray) -> None:
        lim = self.tau
        unset = np.isneginf(lim)
        if unset.any() and score.shape[1] > self.m:
            # Nothing below this chunk's own m-th best can enter the top m.
            kth = np.partition(score, -self.m, axis=1)[:, -self.m]
            lim = np.where(unset, np.nextafter(kth, np.float32(-np.inf)), lim)
        # 1-D flatnonzero is ~3x faster than 2-D nonzero; hits come grouped by query.
        flat = np.flatnonzero(score > lim[:, None])
        if not len(flat):
            return
        c, r = np.divmod(flat, score.shape[1])
        vals = score[c, r]
        counts = np.bincount(c, minlength=len(self.cnt))
        if (self.cnt + counts > self.cap).any():
            self._compact()
            keep = vals > self.tau[c]
            c, r, vals = c[keep], r[keep], vals[keep]
            counts = np.bincount(c, minlength=len(self.cnt))
            need = int((self.cnt + counts).max())
            if need > self.cap:  # only with many exactly tied scores
                self._grow(need)
        starts = np.cumsum(counts) - counts
        pos = self.cnt[c] + np.arange(len(c)) - starts[c]
        self.s[c, pos] = vals
        self.i[c, pos] = rows[r]
        self.cnt += counts

    def _compact(self) -> None:
        keep = np.argpartition(self.s, self.cap - self.m, axis=1)[:, self.cap - self.m :]
        s = np.take_along_axis(self.s, keep, axis=1)
        i = np.take_along_axis(self.i, keep, axis=1)
        self.s.fill(-np.inf)
        self.i.fill(-1)
        self.s[:, : self.m] = s
        self.i[:, : self.m] = i
        self.cnt = np.minimum(self.cnt, self.m)
        self.tau = np.where(self.cnt >= self.m, s.min(axis=1), -np.inf).astype(np.float32)

    def _grow(self, need: int) -> None:
        extra = need - self.cap
        self.s = np.pad(self.s, ((0, 0), (0, extra)), constant_values=-np.inf)
        self.i = np.pad(self.i, ((0, 0), (0, extra)), constant_values=-1)
        self.cap = need

    def result(self) -> list[np.ndarray]:
        # Best first; among equal scores the lower point id first (a stable sort on -score of
        # ids sorted ascending).
        by_id = np.argsort(np.where(self.i < 0, np.iinfo(np.int64).max, self.i), axis=1)
        s = np.take_along_axis(self.s, by_id, axis=1)
        i = np.take_along_axis(self.i, by_id, axis=1)
        order = np.argsort(-s, axis=1, kind="stable")[:, : self.m]
        i = np.take_along_axis(i, order, axis=1)
        n_valid = np.minimum(self.cnt, self.m)
        return [i[j, : n_valid[j]] for j in range(len(i))]


def balance(
    emb: np.ndarray,
    centroids: np.ndarray,
    *,
    candidates: int | None = None,
    return_order: bool = False,
) -> Any:
    """Greedy round-robin balancing: labels (n,) int32 whose cluster sizes differ by at most 1.

    Round r: cluster 0, 1, ..., K-1 in turn takes its nearest unassigned point (L2 distance to its
    centroid), until every point is placed; so the first ``n mod K`` clusters get one extra point.
    ``candidates`` is the length M of each centroid's candidate list (default about 3 N/K); it
    only changes speed, never the result. With ``return_order`` also returns the pool indices in
    the order they were assigned (cluster c's members in that order are nearest-first).
    Deterministic: no randomness beyond the centroids.
    """
    x = _as_f32(emb)
    c = _as_f32(centroids)
    n, k = len(x), len(c)
    if n == 0 or k == 0:
        raise ValueError("balance needs at least one point and one centroid")
    if c.shape[1] != x.shape[1]:
        raise ValueError(f"centroids have dimension {c.shape[1]}, embeddings {x.shape[1]}")
    rounds = math.ceil(n / k)
    m = min(n, candidates or max(3 * rounds + 8, 64))
    # free_arr[n] is a sentinel that is never free: every candidate list ends with it.
    free_arr = np.ones(n + 1, dtype=np.uint8)
    free_arr[n] = 0
    free = memoryview(free_arr)  # type: ignore[arg-type]  # fast scalar access from Python, shares memory with free_arr
    searcher = _Searcher(x, free_arr)

    arrs = searcher.nearest(c, m, only_free=False)  # numpy, for the vectorised low-water check
    lists: list[list[int]] = [a.tolist() + [n] for a in arrs]  # for the per-point loop
    complete = [m >= n] * k  # a list holding every free point can never run dry
    ptr = [0] * k
    labels = np.full(n, -1, dtype=np.int32)
    lab = memoryview(labels)  # type: ignore[arg-type]
    order: list[int] = []
    placed = 0
    check_every = max(1, min(16, rounds // 8))
    low_water = 4 * check_every
    refills = 0

    def refill(which: list[int]) -> None:
        nonlocal refills
        n_free = n - placed
        mm = min(m, n_free)
        new = searcher.nearest(c[which], mm, only_free=True)
        for cl, row in zip(which, new, strict=True):
            arrs[cl] = row
            lists[cl] = row.tolist() + [n]
            ptr[cl] = 0
            complete[cl] = mm >= n_free
        refills += len(which)

    for r in range(rounds):
        if r and r % check_every == 0:
            # Refill, in one batched search, the lists that might run dry before the next check.
            low = []
            for cl in range(k):
                if complete[cl]:
                    continue
                rest = arrs[cl][ptr[cl] :]
                if len(rest) < low_water or np.count_nonzero(free_arr[rest]) < low_water:
                    low.append(cl)
            if low:
                refill(low)
        for cl in range(k):
            if placed == n:
                break
            lst = lists[cl]
            i = ptr[cl]
            p = lst[i]
            while not free[p]:
                if p == n:  # ran dry between checks: refill this one list now
                    refill([cl])
                    lst, i = lists[cl], 0
                else:
                    i += 1
                p = lst[i]
            ptr[cl] = i + 1
            free[p] = 0
            lab[p] = cl
            placed += 1
            if return_order:
                order.append(p)
    log.debug(
        "balanced %d points into %d clusters (M=%d, %d list refills in %d searches)",
        n,
        k,
        m,
        refills,
        searcher.searches,
    )
    if return_order:
        return labels, np.asarray(order, dtype=np.int64)
    return labels


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
