"""The quick start, compiled against eager: engine start plus the selection, end to end.

vLLM on a CPU compiles the model with torch.compile (inductor) before the first prompt. That costs
a minute or more on a small machine and only pays off when the run is long enough for the faster
forward passes to win it back. This benchmark runs the real command a newcomer types,

    python -m selectllm_local select POOL --budget B --model NAME [--enforce-eager]

in a fresh subprocess and a fresh run directory, once per variant and repeat, the two variants
interleaved (their order alternating per repeat) so that the load of a shared machine falls on
both alike. Reported per run: wall seconds, CPU seconds of the child (user + system, all threads,
from ``getrusage(RUSAGE_CHILDREN)``), and ``summary.json``'s stage seconds (model load = engine
start, select = the LLM stage). Medians per (model, variant) and the eager/compiled ratios.

    python benchmarks/bench_startup.py --model smollm2-135m-instruct --model gemma3-270m \
        --repeats 3 --out benchmarks/results/startup_cpu2_quickstart.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POOL = ROOT / "examples" / "dolly_sample_1500.jsonl"
VARIANTS = {"compiled": ["--no-enforce-eager"], "eager": ["--enforce-eager"]}


def _child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def plan_once(args: argparse.Namespace, tmp: Path) -> Path:
    """``selectllm plan`` of the pool (embedding, k-means, subsets: no LLM), not timed."""
    template = tmp / "planned"
    cmd = [sys.executable, "-m", "selectllm_local", "plan", str(args.pool),
           "--budget", str(args.budget), "--run-dir", str(template)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return template


def run_once(args: argparse.Namespace, model: str, variant: str, tmp: Path, tag: str) -> dict:
    """One quick start in a subprocess; its wall, CPU and stage seconds."""
    run_dir = tmp / f"{model}-{variant}-{tag}"
    if args.planned:  # the planned stages are reused: only engine start + selection are timed
        shutil.copytree(args.planned, run_dir)
    cmd = [sys.executable, "-m", "selectllm_local", "select", str(args.pool),
           "--budget", str(args.budget), "--model", model, "--run-dir", str(run_dir),
           *VARIANTS[variant]]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    load0 = os.getloadavg()[0]
    c0, t0 = _child_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall, cpu = time.perf_counter() - t0, _child_cpu() - c0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text("utf-8"))
    sec = summary["seconds"]
    return {"model": model, "variant": variant, "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2), "model_load_s": sec.get("model_load"),
            "select_s": sec.get("select"), "engine_s": sec.get("engine"),
            "prompts": summary["counts"].get("prompts_sent_this_run"),
            "load_average_1min_before": round(load0, 2)}  # fmt: skip


def _median(rows: list[dict], key: str) -> float:
    return round(statistics.median(float(r[key]) for r in rows), 2)


def summarize(runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Medians per (model, variant) and the eager/compiled ratios, over the runs so far."""
    medians: dict[str, Any] = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        per: dict[str, Any] = {}
        for variant in VARIANTS:
            rows = [x for x in runs if x["model"] == model and x["variant"] == variant]
            if rows:
                per[variant] = {"runs": len(rows)} | {
                    k: _median(rows, k)
                    for k in ("wall_s", "cpu_s", "model_load_s", "select_s", "engine_s")
                }
        if len(per) == len(VARIANTS):
            per["eager_over_compiled"] = {
                k: round(per["eager"][k] / per["compiled"][k], 3)
                for k in per["compiled"]
                if k != "runs" and per["compiled"][k]
            }
        medians[model] = per
    from selectllm_local.bench import run as bench

    return {"benchmark": "startup", "pool": str(args.pool.name), "budget": args.budget,
            "reuse_plan": bool(args.reuse_plan),
            "repeats": args.repeats, "runs": runs, "medians": medians,
            "environment": bench.bench_environment(args.machine)}  # fmt: skip


def _write(result: dict[str, Any], out: Path | None) -> None:
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", "utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=Path, default=DEFAULT_POOL)
    ap.add_argument("--budget", type=int, default=137)
    ap.add_argument("--model", action="append", help="default: smollm2-135m-instruct")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--machine", default=None)
    ap.add_argument("--out", type=Path, default=None, help="JSON, rewritten after every run")
    ap.add_argument("--reuse-plan", action="store_true",
                    help="plan once (untimed); each run times engine start + selection only")  # fmt: skip
    ap.add_argument("--from-log", type=Path, default=None,
                    help="summarize the JSON rows an earlier run printed, run nothing")  # fmt: skip
    args = ap.parse_args()
    models = args.model or ["smollm2-135m-instruct"]
    runs: list[dict[str, Any]] = []
    if args.from_log:
        for line in args.from_log.read_text("utf-8").splitlines():
            if line.startswith("{"):
                runs.append(json.loads(line))
        models = []
    with tempfile.TemporaryDirectory(prefix="selectllm-startup-") as tmp_s:
        args.planned = plan_once(args, Path(tmp_s)) if args.reuse_plan and models else None
        for r in range(args.repeats if models else 0):
            for model in models:
                order = ["compiled", "eager"] if r % 2 == 0 else ["eager", "compiled"]
                for variant in order:
                    row = run_once(args, model, variant, Path(tmp_s), str(r))
                    runs.append(row)
                    print(json.dumps(row), flush=True)
                    _write(summarize(runs, args), args.out)
    result = summarize(runs, args)
    for model, per in result["medians"].items():
        print(f"{model}: " + json.dumps(per))
    _write(result, args.out)
    if args.out:
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
