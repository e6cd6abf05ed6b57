"""Planning at scale: k-means, greedy balancing and subsets for 1M x 384 embeddings, k=1000.

What it measures: everything ``plan`` does after the embeddings exist. The physics: k-means and
the balancing's candidate search are both one (points x centroids x dim) product, ~0.8 TFLOP per
pass at this size, so on two cores they are compute-bound matrix products (BLAS). The balancing's
per-point loop is O(N) Python steps; the paper's literal loop would be O(N^2 d / K), hours here.

The data is a Gaussian mixture (2,000 centres, unit-normalised like sentence embeddings), so the
clusters have real structure and unequal natural sizes that the balancing must even out.

Time is wall-clock (what a user waits) and process CPU time (what the work costs when the machine
is shared: other jobs on the two cores stretch the wall time, not the CPU time). Peak memory is the
process's maximum resident set size, data included (1M x 384 float32 = 1.43 GiB).

    python benchmarks/bench_plan.py                    # 1M x 384, k=1000 (a few minutes)
    python benchmarks/bench_plan.py --n 100000 --k 100 # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from selectllm_local.cluster.balance import balance
from selectllm_local.cluster.kmeans import DEFAULT_NITER, train_centroids
from selectllm_local.cluster.subsets import make_plan


def mixture(n: int, dim: int, centres: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((centres, dim), dtype=np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        x[s:e] = mu[rng.integers(0, centres, e - s)]
        x[s:e] += 0.7 * rng.standard_normal((e - s, dim), dtype=np.float32)
        x[s:e] /= np.linalg.norm(x[s:e], axis=1, keepdims=True)  # per chunk: no N x d temporary
    return x


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def timed(fn, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN201 - tiny helper
    w, c = time.perf_counter(), time.process_time()
    out = fn(*a, **kw)
    return out, time.perf_counter() - w, time.process_time() - c


def env() -> dict:
    import faiss

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--niter", type=int, default=DEFAULT_NITER)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument(
        "--repeats", type=int, default=1, help="runs of the whole plan; median reported"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--machine", default="2-core CPU (shared dev VM)")
    ap.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = ap.parse_args()

    load_before = os.getloadavg()
    x, gen_s, _ = timed(lambda: mixture(args.n, args.dim, 2 * args.k, args.seed))
    rss_data = peak_gib()
    runs = []
    for rep in range(args.repeats):
        c, km_w, km_c = timed(train_centroids, x, args.k, seed=args.seed, niter=args.niter)
        labels, bal_w, bal_c = timed(balance, x, c)
        plan, sub_w, sub_c = timed(make_plan, labels, args.budget, seed=args.seed)
        sizes = np.bincount(labels, minlength=args.k)
        placed = sorted(p for s in plan.subsets for p in s.candidates)
        assert placed == list(range(args.n)), "a point is missing or placed twice"
        assert sizes.max() - sizes.min() <= 1
        runs.append(
            {"kmeans_s": km_w, "balance_s": bal_w, "subsets_s": sub_w,
             "kmeans_cpu_s": km_c, "balance_cpu_s": bal_c, "subsets_cpu_s": sub_c,
             "cluster_size_min": int(sizes.min()), "cluster_size_max": int(sizes.max()),
             "subsets": len(plan.subsets)}
        )  # fmt: skip
        print(f"run {rep + 1}/{args.repeats}: {km_w + bal_w + sub_w:.1f} s", file=sys.stderr)

    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 2)

    result = {
        "bench": "plan",
        "n": args.n,
        "dim": args.dim,
        "k": args.k,
        "niter": args.niter,
        "budget": args.budget,
        "repeats": args.repeats,
        "kmeans_s": med("kmeans_s"),
        "balance_s": med("balance_s"),
        "subsets_s": med("subsets_s"),
        "total_s": round(med("kmeans_s") + med("balance_s") + med("subsets_s"), 2),
        "kmeans_cpu_s": med("kmeans_cpu_s"),
        "balance_cpu_s": med("balance_cpu_s"),
        "subsets_cpu_s": med("subsets_cpu_s"),
        "total_cpu_s": round(med("kmeans_cpu_s") + med("balance_cpu_s") + med("subsets_cpu_s"), 2),
        "peak_rss_gib": round(peak_gib(), 2),
        "data_rss_gib": round(rss_data, 2),
        "cluster_size_min": runs[-1]["cluster_size_min"],
        "cluster_size_max": runs[-1]["cluster_size_max"],
        "subsets": runs[-1]["subsets"],
        "target_s": 60,
        "target_gib": 4,
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "machine": args.machine,
        "env": env(),
    }
    rows = [
        ("k-means (FAISS)", result["kmeans_s"], result["kmeans_cpu_s"]),
        ("greedy balance", result["balance_s"], result["balance_cpu_s"]),
        ("subsets + picks", result["subsets_s"], result["subsets_cpu_s"]),
        ("total", result["total_s"], result["total_cpu_s"]),
    ]
    table = [
        f"Planning {args.n:,} x {args.dim}, k={args.k}, {args.niter} k-means iterations "
        f"({args.machine}; load average before {result['loadavg_before'][0]}, "
        f"after {result['loadavg_after'][0]})",
        "",
        "| stage | wall s | CPU s |",
        "|---|---:|---:|",
        *[f"| {name} | {w:.1f} | {c:.1f} |" for name, w, c in rows],
        "",
        f"Peak RSS {result['peak_rss_gib']} GiB (the embeddings alone: {result['data_rss_gib']} GiB "
        f"after generation). Cluster sizes {result['cluster_size_min']}-"
        f"{result['cluster_size_max']}; {result['subsets']} subsets; every point placed once.",
    ]
    print("\n".join(table))
    line = json.dumps(result)
    print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
