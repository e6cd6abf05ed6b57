"""Selection throughput vs this machine's measured matmul peak (see benchmarks/README.md).

    python benchmarks/bench_select.py --preset tiny --pool data/dolly/databricks-dolly-15k.jsonl.gz
    python benchmarks/bench_select.py --preset cpu --pool data/dolly/databricks-dolly-15k.jsonl.gz --subsets 16 --machine "2-core CPU"
    python benchmarks/bench_select.py --dry-run --pool alpaca_data.json --shape llama-3-8b --gpu h100 --utilization 0.4

Prints a table, writes <out>/<name>.json and <name>.png, and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="tiny", help="tiny (CI) or cpu (the issue's workload)")
    p.add_argument("--pool", type=Path, required=True, help="pool file (Dolly, Alpaca, ...)")
    p.add_argument("--shape", help="random-weight model shape (tinymodel.SHAPES)")
    p.add_argument("--model", help="a local model folder instead of a shape")
    p.add_argument("--dtype", help="auto | bfloat16 | float16 | float32")
    p.add_argument("--tokenizer", help="toy | pool (shapes only)")
    p.add_argument("--subsets", type=int)
    p.add_argument("--candidates", type=int)
    p.add_argument("--picks", type=int)
    p.add_argument("--max-candidate-tokens", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument(
        "--setting", action="append", help="e.g. vllm, vllm:free, vllm:logprobs, transformers:b8"
    )
    p.add_argument("--machine", default="", help="name the machine in the results")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--name", default=None, help="output file stem (default select_<preset>)")
    p.add_argument("--cache-dir", type=Path, help="where random-weight models are cached")
    p.add_argument("--dry-run", action="store_true", help="estimate only; no model is loaded")
    p.add_argument("--gpu", default="h100", help="dry run: h100, h200, a100, ... or measured")
    p.add_argument("--utilization", type=float, default=0.4)
    p.add_argument("--budget", type=int)
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(message)s")

    from rich.console import Console

    from selectllm_local.bench import config as benchconfig
    from selectllm_local.bench import dry as benchdry
    from selectllm_local.bench import output as benchout
    from selectllm_local.bench import run as bench
    from selectllm_local.run.store import write_json

    if a.dry_run:
        est = benchdry.dry_run(
            a.pool, shape=a.shape or "llama-3-8b", model=a.model, gpu=a.gpu,
            utilization=a.utilization, candidates=a.candidates, budget=a.budget,
        )  # fmt: skip
        print(benchdry.format_dry_run(est))
        if a.name:
            write_json(a.out / f"{a.name}.json", est)
        print(json.dumps(est))
        return
    settings = [benchconfig.parse_setting(s) for s in a.setting] if a.setting else None
    cfg = benchconfig.config_from_preset(
        a.preset, pool=a.pool, shape=a.shape, model=a.model, dtype=a.dtype, tokenizer=a.tokenizer,
        subsets=a.subsets, candidates=a.candidates, picks=a.picks,
        max_candidate_tokens=a.max_candidate_tokens, warmup=a.warmup, repeats=a.repeats,
        settings=settings, machine=a.machine, cache_dir=a.cache_dir,
    )  # fmt: skip
    doc = bench.run_benchmark(cfg, progress=True)
    Console().print(benchout.results_table(doc))
    paths = benchout.write_outputs(doc, a.out, a.name or f"select_{a.preset}")
    print(f"wrote {', '.join(str(v) for v in paths.values())}")
    print(json.dumps({r["label"]: round(r["prompt_tokens_per_s"], 1) for r in doc["results"]}))


if __name__ == "__main__":
    main()
