"""Embedding throughput of the default embedder (packaged all-MiniLM-L6-v2) on Dolly-15k.

Embedding is the slowest planning stage on a CPU: a 6-layer, 384-wide encoder over texts in the
paper's ``### Instruction: ... ### Input: ... ### Response:`` format, truncated at 256 tokens.
Dolly's contexts make many texts long, so throughput depends on padding: texts are length-sorted
before batching, and the batch size trades per-call overhead against attention cost on the longest
texts of a batch.

Sentences/s is wall-clock over the whole sample (what a user waits). CPU seconds are recorded too:
when other jobs share the cores, wall time stretches but CPU time does not.

    python benchmarks/bench_embed.py                       # batch 32/64/128 on a 3,000-row sample
    python benchmarks/bench_embed.py --rows 0 --batch 64   # the full pool at one batch size
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from selectllm_local import hardware
from selectllm_local.data.pool import embedding_text, load_pool
from selectllm_local.embed.encoder import DEFAULT_EMBEDDER, embed_texts

DOLLY = Path(__file__).resolve().parents[1] / "data" / "dolly" / "databricks-dolly-15k.jsonl.gz"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pool", type=Path, default=DOLLY)
    ap.add_argument("--rows", type=int, default=3000, help="seeded random sample; 0 = all rows")
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--model", default=DEFAULT_EMBEDDER)
    ap.add_argument("--device", default=None)
    ap.add_argument("--machine", default="2-core CPU (shared dev VM)")
    ap.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = ap.parse_args()

    import torch

    items, _ = load_pool(args.pool)
    texts = [embedding_text(i) for i in items]
    if args.rows and args.rows < len(texts):
        pick = np.random.default_rng(0).choice(len(texts), args.rows, replace=False)
        texts = [texts[i] for i in sorted(pick)]
    embed_texts(texts[:64], model=args.model, device=args.device, progress=False)  # load + warm up

    load_before = os.getloadavg()
    results = []
    for bs in args.batch:
        walls, cpus = [], []
        for _ in range(args.repeats):
            w, c = time.perf_counter(), time.process_time()
            embed_texts(texts, model=args.model, batch_size=bs, device=args.device, progress=False)
            walls.append(time.perf_counter() - w)
            cpus.append(time.process_time() - c)
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        results.append(
            {"batch_size": bs, "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
             "sentences_per_s": round(len(texts) / wall, 1)}
        )  # fmt: skip
        print(f"batch {bs}: {len(texts) / wall:.1f} sentences/s", file=sys.stderr)
    best = max(results, key=lambda r: r["sentences_per_s"])
    out = {
        "bench": "embed",
        "model": args.model,
        "pool": args.pool.name,
        "rows": len(texts),
        "mean_chars": round(sum(map(len, texts)) / len(texts), 1),
        "repeats": args.repeats,
        "results": results,
        "best_batch_size": best["batch_size"],
        "best_sentences_per_s": best["sentences_per_s"],
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "machine": args.machine,
        "env": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "device": hardware.default_device(args.device),
            "cores": os.cpu_count(),
        },
    }
    table = [
        f"Embedding {len(texts):,} Dolly texts (mean {out['mean_chars']} chars) with {args.model} "
        f"({args.machine}; load average before {out['loadavg_before'][0]}, after "
        f"{out['loadavg_after'][0]})",
        "",
        "| batch | seconds | CPU s | sentences/s |",
        "|---:|---:|---:|---:|",
        *[
            f"| {r['batch_size']} | {r['seconds']} | {r['cpu_seconds']} | {r['sentences_per_s']} |"
            for r in results
        ],
    ]
    print("\n".join(table))
    print(json.dumps(out))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
        args.out.with_suffix(".md").write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
