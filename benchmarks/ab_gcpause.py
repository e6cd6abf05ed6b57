"""The cycle collector paused for the selection's own work, against not paused: one process,
cold selects alternating (ABBA), paired per block (``selection.gcpause``).

Same workload and stubbed engine as ``bench_overhead.py`` (96 prompts of K = 14 Dolly candidates
cut to 256 tokens, the pool BPE, an empty candidate token store and the Rust BPE cache emptied
before each select). Reports CPU ms per prompt of each arm (median, all), the paired difference
(median, 95% bootstrap interval), and the change in the arms' total CPU time.

    python benchmarks/ab_gcpause.py --pairs 20 --out benchmarks/results/overhead_issue19_gcpause.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_overhead as bo


def measure(mode: str, pairs: int, seed: int) -> dict[str, Any]:
    from selectllm_local.bench import run as bench
    from selectllm_local.config import SelectorConfig
    from selectllm_local.data import pool as data
    from selectllm_local.models import random_weights as tinymodel
    from selectllm_local.selection import generate, logprobs

    items, _ = data.load_pool(bo.DEFAULT_POOL)
    items = [dataclasses.replace(it, index=i) for i, it in enumerate(items[: 96 * 14])]
    plan = bench.strided_plan(96, 14, 1)
    cfg = SelectorConfig(mode=mode, max_candidate_tokens=256, retries=0)
    paused = generate.paused_gc
    arms: dict[str, list[float]] = {"paused": [], "not_paused": []}
    with tempfile.TemporaryDirectory(prefix="selectllm-gcpause-") as tmp_s:
        tmp = Path(tmp_s)
        backend = bo._backend(
            tinymodel.build_random_model(tmp / "model", "tiny-qwen2"),
            bo._tokenizer("pool", items, tmp),
        )
        bo._select(plan, items, backend, cfg, tmp / "warm-up")
        try:
            for p in range(pairs):
                order = ["paused", "not_paused"] if p % 2 == 0 else ["not_paused", "paused"]
                for arm in order:
                    pause = paused if arm == "paused" else contextlib.nullcontext
                    generate.paused_gc = logprobs.paused_gc = pause  # type: ignore[assignment]
                    c0 = time.process_time()
                    bo._select(plan, items, backend, cfg, tmp / f"store-{p}-{arm}")
                    arms[arm].append((time.process_time() - c0) * 1000 / len(plan.subsets))
        finally:
            generate.paused_gc = logprobs.paused_gc = paused  # type: ignore[assignment]
    diff = [b - a for a, b in zip(arms["paused"], arms["not_paused"], strict=True)]
    rng = random.Random(seed)
    boots = sorted(statistics.median(rng.choices(diff, k=len(diff))) for _ in range(2000))
    return {
        "mode": mode,
        "pairs": pairs,
        "cpu_ms_per_prompt_paused_median": round(statistics.median(arms["paused"]), 3),
        "cpu_ms_per_prompt_not_paused_median": round(statistics.median(arms["not_paused"]), 3),
        "saved_cpu_ms_per_prompt_median": round(statistics.median(diff), 3),
        "saved_ci95": [round(boots[49], 3), round(boots[1950], 3)],
        "total_cpu_change_pct": round(100 * (sum(arms["paused"]) / sum(arms["not_paused"]) - 1), 1),
        "slowest_paused": round(max(arms["paused"]), 3),
        "slowest_not_paused": round(max(arms["not_paused"]), 3),
        "paused_all": [round(x, 3) for x in arms["paused"]],
        "not_paused_all": [round(x, 3) for x in arms["not_paused"]],
        "load_average_after": list(os.getloadavg()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="of the bootstrap")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    runs = []
    for mode in ("generate", "logprobs"):
        res = measure(mode, args.pairs, args.seed)
        runs.append(res)
        print(f"{mode:9s}: {res['cpu_ms_per_prompt_paused_median']:.3f} ms CPU per prompt paused, "
              f"{res['cpu_ms_per_prompt_not_paused_median']:.3f} not; paired difference "
              f"{res['saved_cpu_ms_per_prompt_median']:.3f} ms (95% CI {res['saved_ci95'][0]:.3f} "
              f"to {res['saved_ci95'][1]:.3f}); total CPU {res['total_cpu_change_pct']:+.1f}%; "
              f"slowest select {res['slowest_paused']:.2f} vs {res['slowest_not_paused']:.2f} ms "
              "per prompt")  # fmt: skip
    if args.out:
        from selectllm_local.bench import run as bench

        env = bench.bench_environment(None)
        args.out.write_text(
            json.dumps({"runs": runs, "environment": env}, indent=2) + "\n", "utf-8"
        )
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
