"""One process vs N Ray actors: selection throughput, and a ``--dry-run`` estimate for N GPUs.

Selection is data-parallel: every prompt of a round is independent, so N actors, each holding a
full copy of the model, serve N shards at once and the ideal speed-up is N, minus what does not
split: the driver's rendering and tokenizing (serial, ~ms per prompt, ``bench_overhead.py``),
the shard hand-off (one round trip per shard), and each actor's model load (paid once per actor,
in parallel). On a GPU node the engine is the cost and the speed-up is close to N; on a 2-core
CPU the two actors share the same two cores the single process had (each actor gets 1 CPU, the
single process 2 threads), so this measures the overhead of Ray more than any gain.

Measured: the real select stage (``pipeline.select_run``) on ``--rows`` rows of the pool with a
warm engine (model load excluded), repeated ``--repeats`` times (answers removed between
repeats, plan and embeddings reused); prompts/s = prompts / engine wall seconds, median.

    python benchmarks/bench_ray.py --machine "2-core shared CPU" \\
        --out benchmarks/results/ray_cpu2.json
    python benchmarks/bench_ray.py --dry-run --gpus 1 2 4 8 --shape llama-3-8b --gpu h100
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POOL = ROOT / "examples" / "dolly_sample_1500.jsonl"
KEYS = ["benchmark", "mode", "actors", "model", "backend", "prompts", "repeats",
        "prompts_per_s_median", "prompts_per_s_all", "speedup_vs_one_process"]  # fmt: skip


def _pool(rows: int, out: Path) -> Path:
    lines = DEFAULT_POOL.read_text("utf-8").splitlines()[:rows]
    path = out / f"pool{rows}.jsonl"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def _measure(cfg: Any, backend: Any, repeats: int) -> list[dict[str, Any]]:
    from selectllm_local.run.pipeline import select_run

    select_run(cfg, backend=backend, progress=False)  # warm-up: plan, embeddings, engine
    out = []
    for _ in range(repeats):
        (cfg.plan.resolved_run_dir / "responses.jsonl").unlink()
        s = select_run(cfg, backend=backend, progress=False, report=False).summary
        out.append({"prompts": s.counts.prompts_sent_this_run,
                    "engine_s": s.seconds.engine,
                    "prompts_per_s": s.throughput.prompts_per_s})  # fmt: skip
    return out


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    from dataclasses import replace

    from selectllm_local.backends import load_backend
    from selectllm_local.config import SelectConfig

    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    model = args.model
    if model.startswith("tiny:"):
        from selectllm_local.models.random_weights import build_random_model

        model = str(build_random_model(tmp / "model", model.removeprefix("tiny:"), seed=0))
    pool = _pool(args.rows, tmp)
    runs = []
    for actors in [0, *args.actors]:
        cfg = SelectConfig.of(pool=pool, budget=args.budget, run_dir=tmp / f"run{actors}",
                              model=model, backend=args.backend, dtype="float32",
                              max_model_len=args.max_model_len)  # fmt: skip
        engine = cfg.engine
        if actors:
            engine = replace(engine, ray="local", ray_actors=actors)
        backend = load_backend(engine.backend, model, engine)
        try:
            reps = _measure(cfg, backend, args.repeats)
        finally:
            backend.close()
        rates = [r["prompts_per_s"] for r in reps]
        runs.append({"benchmark": "ray_select", "mode": "ray" if actors else "one process",
                     "actors": actors, "model": args.model, "backend": args.backend,
                     "prompts": reps[0]["prompts"], "repeats": args.repeats,
                     "prompts_per_s_median": statistics.median(rates), "prompts_per_s_all": rates,
                     "speedup_vs_one_process": None})  # fmt: skip
    base = runs[0]["prompts_per_s_median"]
    for r in runs:
        r["speedup_vs_one_process"] = round(r["prompts_per_s_median"] / base, 3) if base else None
    return runs


def dry_run_gpus(args: argparse.Namespace) -> dict[str, Any]:
    """The one-GPU estimate of ``bench --dry-run`` (``bench/dry.py``) split over N actors."""
    from selectllm_local.bench.dry import dry_run

    est = dry_run(args.pool, shape=args.shape, gpu=args.gpu, utilization=args.utilization)
    one = est["total_seconds_prefix_cached"]
    rows = []
    for n in args.gpus:
        # prompts split evenly; each actor pays its own model load, all in parallel
        rows.append({"gpus": n, "actors": n, "select_seconds": one / n + args.startup_s,
                     "speedup": (one + args.startup_s) / (one / n + args.startup_s)})  # fmt: skip
    return {"benchmark": "ray_dry_run", "one_gpu": est, "startup_s_per_actor": args.startup_s,
            "by_gpus": rows}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny:tiny-qwen2",
                   help="model folder, known name, or tiny:<shape> (random weights)")  # fmt: skip
    p.add_argument("--backend", default="transformers")
    p.add_argument("--rows", type=int, default=240)
    p.add_argument("--budget", type=int, default=24)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--actors", type=int, nargs="+", default=[2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--machine", default="")
    p.add_argument("--out", type=Path)
    p.add_argument("--dry-run", action="store_true", help="estimate for N GPUs, load no model")
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--pool", type=Path, default=DEFAULT_POOL)
    p.add_argument("--shape", default="llama-3-8b")
    p.add_argument("--gpu", default="h100")
    p.add_argument("--utilization", type=float, default=0.4)
    p.add_argument("--startup-s", type=float, default=60.0, help="model load per actor (s)")
    args = p.parse_args()

    from selectllm_local.bench.run import bench_environment

    if args.dry_run:
        result: dict[str, Any] = dry_run_gpus(args)
        print(f"{'GPUs':>5} {'select s':>10} {'speed-up':>9}")
        for r in result["by_gpus"]:
            print(f"{r['gpus']:>5} {r['select_seconds']:>10.1f} {r['speedup']:>9.2f}")
    else:
        runs = measure(args)
        print(f"{'mode':<12} {'actors':>6} {'prompts':>8} {'prompts/s':>10} {'speed-up':>9}")
        for r in runs:
            print(f"{r['mode']:<12} {r['actors']:>6} {r['prompts']:>8} "
                  f"{r['prompts_per_s_median']:>10.3f} {r['speedup_vs_one_process']:>9}")  # fmt: skip
        result = {"runs": runs}
    result["environment"] = bench_environment(args.machine)
    line = json.dumps(result, default=str)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n", "utf-8")
    print(line)


if __name__ == "__main__":
    main()
