"""Cost of the likelihood selectors (``ifd``, ``cluster-ifd``) per 1,000 pool rows.

What it costs: two prefills per row (the response after its prompt, and the response alone), no
decoding, so the work is about (prompt + 2 x response) tokens a row, compute-bound like any
prefill. The picking itself (a sort, or the plan's rounds) is milliseconds; ``cluster-ifd`` adds
the plan (embedding + k-means), which ``select`` pays too and ``bench_embed.py`` / ``bench_plan.py``
measure. Each repeat scores the same rows from an empty score file, on an engine loaded once
(start-up is reported apart). Wall time stretches when other jobs share the cores; CPU time
(this process, every thread) does not, so both are recorded, with the load average.

    python benchmarks/bench_ifd.py --backend vllm transformers --rows 200 --repeats 3 \\
        --out benchmarks/results/ifd_cpu2_smollm2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
POOL = REPO / "examples" / "dolly_sample_1500.jsonl"


def bench_backend(name: str, model: str, items: list, args: argparse.Namespace) -> dict:
    from selectllm_local.backends import load_backend
    from selectllm_local.baselines import ifd as likelihood
    from selectllm_local.config import EngineConfig

    t = time.perf_counter()
    options = EngineConfig(dtype=args.dtype, max_model_len=2048, enforce_eager=True)
    backend = load_backend(name, model, options)
    startup = time.perf_counter() - t
    walls, cpus, tokens = [], [], 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            likelihood.ifd_scores(  # warm-up: first calls allocate and compile
                items[:8], backend, key="warm", cache_path=Path(tmp) / "w.jsonl", progress=False
            )
            for r in range(args.repeats):
                before = backend.stats.get("prompt_tokens", 0)
                w, c = time.perf_counter(), time.process_time()
                out = likelihood.ifd_scores(
                    items,
                    backend,
                    key="bench",
                    cache_path=Path(tmp) / f"r{r}.jsonl",
                    max_length=args.max_length,
                    progress=False,
                )
                walls.append(time.perf_counter() - w)
                cpus.append(time.process_time() - c)
                tokens = int(backend.stats.get("prompt_tokens", 0) - before)
                print(f"{name} repeat {r}: {walls[-1]:.1f} s", file=sys.stderr)
    finally:
        backend.close()
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    likelihood.ifd_pick(out.ifd, max(1, len(items) // 10), rng)
    pick = time.perf_counter() - t
    return {
        "backend": name,
        "startup_seconds": round(startup, 1),
        "seconds": [round(x, 2) for x in walls],
        "cpu_seconds": [round(x, 2) for x in cpus],
        "median_seconds": round(wall, 2),
        "median_cpu_seconds": round(cpu, 2),
        "seconds_per_1000_rows": round(wall * 1000 / len(items), 1),
        "cpu_seconds_per_1000_rows": round(cpu * 1000 / len(items), 1),
        "prompt_tokens_per_row": round(tokens / len(items), 1),
        "tokens_per_s": round(tokens / wall, 1),
        "pick_seconds": round(pick, 4),
        "rows_ifd_below_1": int((out.ifd < 1).sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pool", type=Path, default=POOL)
    ap.add_argument("--rows", type=int, default=200, help="first N rows with a response")
    ap.add_argument("--backend", nargs="+", default=["vllm", "transformers"])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--machine", default="2-core CPU (shared dev VM, loaded by other jobs)")
    ap.add_argument("--out", type=Path, default=None, help="write OUT.json")
    args = ap.parse_args()

    from selectllm_local.backends import resolve_model
    from selectllm_local.bench.run import bench_environment
    from selectllm_local.data.pool import load_pool

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # CPU time of this process
    model = resolve_model(args.model)
    items = [it for it in load_pool(args.pool)[0] if it.output][: args.rows]
    load_before = os.getloadavg()
    results = [bench_backend(b, model, items, args) for b in args.backend]
    out = {
        "bench": "ifd",
        "model": args.model,
        "dtype": args.dtype,
        "pool": args.pool.name,
        "rows": len(items),
        "max_length": args.max_length,
        "repeats": args.repeats,
        "results": results,
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "machine": args.machine,
        "env": bench_environment(args.machine),  # versions and machine facts, as every bench
    }
    print(
        f"IFD scores of {len(items)} Dolly rows with {args.model} ({args.dtype}; {args.machine}; "
        f"load average {out['loadavg_before'][0]} -> {out['loadavg_after'][0]})\n\n"
        "| backend | s / 1,000 rows | CPU s / 1,000 rows | tokens / row | tokens/s | start-up s |\n"
        "|---|---:|---:|---:|---:|---:|"
    )
    for r in results:
        print(
            f"| {r['backend']} | {r['seconds_per_1000_rows']} | {r['cpu_seconds_per_1000_rows']} "
            f"| {r['prompt_tokens_per_row']} | {r['tokens_per_s']} | {r['startup_seconds']} |"
        )
    print(json.dumps(out))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
