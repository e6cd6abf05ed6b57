"""Selection throughput vs this machine's measured matmul peak (see benchmarks/README.md).

    python benchmarks/bench_select.py --preset tiny --pool data/dolly/databricks-dolly-15k.jsonl.gz
    python benchmarks/bench_select.py --preset cpu --pool data/dolly/databricks-dolly-15k.jsonl.gz --subsets 16 --machine "2-core CPU"
    python benchmarks/bench_select.py --dry-run --pool alpaca_data.json --shape llama-3-8b --gpu h100 --utilization 0.4

The same benchmark as `selectllm bench`: its options are the settings of
``config.BenchCommand`` (declared once there; presets fill what is not given). Prints a table,
writes <out>/<name>.json and <name>.png, and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import typing
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parser() -> argparse.ArgumentParser:
    """One option per ``BenchCommand`` setting: its flags, type and docstring as help."""
    from selectllm_local.config import BenchCommand
    from selectllm_local.config.base import field_docs, field_types, flags_of

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    docs, types = field_docs(BenchCommand), field_types(BenchCommand)
    for f in dataclasses.fields(BenchCommand):
        tp = types[f.name]
        args = [x for x in typing.get_args(tp) if x is not type(None)] or [tp]
        kw: dict[str, Any] = {"dest": f.name, "help": docs.get(f.name, ""),
                              "default": argparse.SUPPRESS}  # fmt: skip
        flags = [s for flag in flags_of(f) for s in flag.split("/")[:1]]
        if bool in args:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(args[0]) is list:
            kw["action"] = "append"
        else:
            kw["type"] = args[0] if args[0] in (int, float) else str
        p.add_argument(*flags, **kw)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main() -> None:
    a = vars(parser().parse_args())
    verbose = a.pop("verbose")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")

    from selectllm_local.bench.command import bench_command
    from selectllm_local.config import BenchCommand

    cmd = BenchCommand.of(**a)
    doc, text = bench_command(cmd, progress=True)
    print(text)
    if cmd.dry_run or "results" not in doc:
        print(json.dumps(doc, default=str))
    else:
        print(json.dumps({r["label"]: round(r["prompt_tokens_per_s"], 1) for r in doc["results"]}))


if __name__ == "__main__":
    main()
