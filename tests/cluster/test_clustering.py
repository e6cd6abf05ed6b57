"""Clustering: K rule, real FAISS k-means, and the fast greedy balancing against the literal loop."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selectllm_local.cluster import kmeans as clustering
from selectllm_local.cluster.balance import balance
from selectllm_local.cluster.kmeans import (
    DEFAULT_MAX_K,
    balanced_clusters,
    choose_k,
    faiss_gpus,
    kmeans,
    kmeans_device,
    train_centroids,
)
from selectllm_local.cluster.subsets import make_plan
from selectllm_local.errors import UserError


def _faiss_has_gpu() -> bool:
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def mixture(n: int, dim: int, centres: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((centres, dim)) * 3
    x = mu[rng.integers(0, centres, n)] + rng.standard_normal((n, dim))
    return x.astype(np.float32)


def literal_greedy(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The paper's loop: each cluster in turn takes its nearest unassigned point (O(N^2))."""
    d = ((x[:, None, :].astype(np.float64) - c[None, :, :]) ** 2).sum(-1)
    free = np.ones(len(x), dtype=bool)
    labels = np.full(len(x), -1)
    placed = 0
    while placed < len(x):
        for cl in range(len(c)):
            if placed == len(x):
                break
            p = int(np.argmin(np.where(free, d[:, cl], np.inf)))
            free[p] = False
            labels[p] = cl
            placed += 1
    return labels


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, 1), (2, 2), (3, 2), (1500, 2), (14_823, 15), (30_000, 30), (52_002, DEFAULT_MAX_K), (10**6, DEFAULT_MAX_K)],
)  # fmt: skip
def test_choose_k_paper_rule_capped(n: int, expected: int) -> None:
    assert choose_k(n) == expected


def test_choose_k_flags() -> None:
    assert choose_k(10**6, max_k=1000) == 1000
    with pytest.raises(UserError, match="--max-k"):
        choose_k(100, max_k=1)
    with pytest.raises(UserError):
        choose_k(0)


def test_kmeans_real_faiss_is_seeded() -> None:
    x = mixture(3000, 16, 6, 0)
    c1, l1 = kmeans(x, 6, seed=3)
    c2, l2 = kmeans(x, 6, seed=3)
    assert c1.shape == (6, 16) and l1.shape == (3000,) and set(np.unique(l1)) <= set(range(6))
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(l1, l2)


@pytest.mark.parametrize(
    ("n", "k", "dim", "m"),
    [(500, 7, 8, None), (1000, 30, 16, None), (333, 5, 4, None), (50, 50, 3, None),
     (2000, 3, 8, None), (800, 9, 6, 2), (400, 4, 5, 17)],
)  # fmt: skip
def test_balance_equals_literal_greedy(n: int, k: int, dim: int, m: int | None) -> None:
    """Short candidate lists (m) force many refills; the result must not change."""
    x = mixture(n, dim, 2 * k, n + k)
    c = train_centroids(x, k, seed=1)
    labels = balance(x, c, candidates=m)
    np.testing.assert_array_equal(labels, literal_greedy(x, c))


def test_balance_order_is_nearest_first_per_cluster() -> None:
    x = mixture(300, 4, 5, 1)
    c = train_centroids(x, 5, seed=0)
    labels, order = balance(x, c, return_order=True)
    assert sorted(order.tolist()) == list(range(300))
    for cl in range(5):
        members = order[labels[order] == cl]
        d = ((x[members] - c[cl]) ** 2).sum(1)
        # Round r's pick is the nearest free point at that moment, so the first pick is the
        # cluster's nearest point overall.
        assert d[0] == pytest.approx(((x - c[cl]) ** 2).sum(1).min(), rel=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 300),
    st.integers(1, 20),
    st.integers(1, 8),
    st.integers(0, 10**6),
    st.booleans(),
)
def test_balanced_sizes_differ_by_at_most_one(n, k, dim, seed, duplicates) -> None:
    k = min(k, n)
    x = mixture(n, dim, 3, seed)
    if duplicates:  # many exactly tied distances
        x = x[np.random.default_rng(seed).integers(0, max(1, n // 4), n)]
    labels = balanced_clusters(x, k, seed=seed)
    sizes = np.bincount(labels, minlength=k)
    assert len(sizes) == k and sizes.max() - sizes.min() <= 1 and sizes.sum() == n
    # The first n mod k clusters hold the extra point (round-robin order).
    assert list(sizes) == [n // k + (1 if i < n % k else 0) for i in range(k)]
    np.testing.assert_array_equal(labels, balanced_clusters(x, k, seed=seed))


def test_balanced_plan_on_real_pool_sizes() -> None:
    """Dolly (14,823 after dedup) and Alpaca (52,002) sized pools: exact partition, K capped."""
    for n in (14_823, 52_002):
        x = mixture(n, 384, 200, n)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        k = choose_k(n)
        labels = balanced_clusters(x, k, seed=0)
        sizes = np.bincount(labels, minlength=k)
        assert sizes.max() - sizes.min() <= 1
        for budget in (1, 1000, 3000, n):
            plan = make_plan(labels, budget, seed=0)
            flat = [p for s in plan.subsets for p in s.candidates]
            assert len(flat) == n and len(set(flat)) == n
            assert all(len(set(s.clusters)) == len(s.clusters) for s in plan.subsets)
            if plan.rounds_expected == 1:
                assert sum(s.k for s in plan.subsets) == budget


# -- k-means device: GPU when the installed FAISS has one ----------------------------------------


def test_kmeans_device_follows_the_faiss_gpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    assert kmeans_device(0) == "cpu"
    assert kmeans_device(1) == "cuda:0" and kmeans_device(4) == "cuda:0"
    monkeypatch.setattr(clustering, "faiss_gpus", lambda: 2)
    assert kmeans_device() == "cuda:0"
    monkeypatch.setattr(clustering, "faiss_gpus", lambda: 0)
    assert kmeans_device() == "cpu"


def test_gpu_branch_swaps_in_the_gpu_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a GPU count injected, k-means asks for a GPU flat index on the named device; here a
    real CPU flat index stands in for it, so FAISS trains the same seeded sample the same way."""
    import faiss

    asked: list[tuple[int, int, bool]] = []

    def cpu_stand_in(faiss_mod, d: int, *, spherical: bool, device: int):
        asked.append((d, device, spherical))
        return faiss.IndexFlatIP(d) if spherical else faiss.IndexFlatL2(d)

    monkeypatch.setattr(clustering, "faiss_gpus", lambda: 1)
    monkeypatch.setattr(clustering, "_gpu_flat_index", cpu_stand_in)
    x = mixture(2000, 8, 6, 3)
    on_cpu = train_centroids(x, 6, seed=4, device="cpu")
    assert asked == []  # an explicit "cpu" never builds a GPU index
    via_gpu_path = train_centroids(x, 6, seed=4)  # default device: the injected GPU
    assert asked == [(8, 0, False)]
    np.testing.assert_allclose(via_gpu_path, on_cpu, rtol=1e-5, atol=1e-5)
    train_centroids(x, 6, seed=4, device="cuda:3", spherical=True)
    assert asked[-1] == (8, 3, True)
    labels = balanced_clusters(x, 6, seed=4)
    assert np.bincount(labels, minlength=6).tolist() == [
        2000 // 6 + (i < 2000 % 6) for i in range(6)
    ]


def test_kmeans_device_follows_the_installed_faiss() -> None:
    """faiss-cpu (CI) reports no GPU, so plans and the golden selections stay on the CPU; a FAISS
    that sees GPUs trains on the first one (the k-means itself: the gpu-marked test below)."""
    import faiss

    gpus = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
    assert faiss_gpus() == gpus
    assert kmeans_device() == ("cuda:0" if gpus > 0 else "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(
    not _faiss_has_gpu(), reason="the installed FAISS has no GPU (faiss-cpu, or no CUDA device)"
)
def test_gpu_kmeans_keeps_the_balanced_guarantees() -> None:
    """Real GPU FAISS: centroids from a GPU index, then the exact greedy balance on them."""
    x = mixture(3000, 16, 8, 5)
    assert kmeans_device() == "cuda:0"
    c_gpu = train_centroids(x, 8, seed=2)
    c_cpu = train_centroids(x, 8, seed=2, device="cpu")
    assert c_gpu.shape == (8, 16) and np.isfinite(c_gpu).all()

    def inertia(c: np.ndarray) -> float:
        return float(((x[:, None, :] - c[None]) ** 2).sum(-1).min(1).sum())

    assert inertia(c_gpu) <= 1.02 * inertia(c_cpu)  # same sample and seed: the same quality
    labels = balance(x, c_gpu)
    np.testing.assert_array_equal(labels, literal_greedy(x, c_gpu))
    sizes = np.bincount(balanced_clusters(x, 8, seed=2), minlength=8)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 3000
