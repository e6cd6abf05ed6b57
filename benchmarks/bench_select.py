"""Selection throughput vs this machine's measured matmul peak (see benchmarks/README.md).

    python benchmarks/bench_select.py --preset tiny --pool data/dolly/databricks-dolly-15k.jsonl.gz
    python benchmarks/bench_select.py --preset cpu --pool data/dolly/databricks-dolly-15k.jsonl.gz --subsets 16 --machine "2-core CPU"
    python benchmarks/bench_select.py --dry-run --pool alpaca_data.json --shape llama-3-8b --gpu h100 --utilization 0.4

The same benchmark as `selectllm bench`: its options are the settings of ``config.BenchCommand``
and of the ``config.BenchConfig`` it nests (each declared once there). A preset fills the
settings not given; a flag overrides it. Prints a table, writes <out>/<name>.json and <name>.png,
and ends with one JSON line. A bad value exits 2 with a message naming the flag.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import typing
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selectllm_local.config import BenchCommand

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parser() -> argparse.ArgumentParser:
    """One option per setting of ``BenchCommand`` (its nested ``BenchConfig`` opened up): the
    flags, type and docstring of each field, as ``selectllm bench`` has them."""
    from selectllm_local.config import BenchCommand
    from selectllm_local.config.base import field_docs, field_types, flags_of
    from selectllm_local.config.loader import leaves

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name, where in leaves(BenchCommand).items():
        owner, f = where[0]
        if not f.metadata.get("cli", True):
            continue
        tp = field_types(owner)[name]
        args = [x for x in typing.get_args(tp) if x is not type(None)] or [tp]
        kw: dict[str, Any] = {"dest": name, "help": field_docs(owner).get(name, "").replace("%", "%%"),
                              "default": argparse.SUPPRESS}  # fmt: skip
        flags = [flag.split("/")[0] for flag in flags_of(f)]
        if tp is bool or bool in args:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(args[0]) is list:
            kw["action"] = "append"
        else:  # a Literal, a path or a name: checked by the config, which names the flag
            kw["type"] = args[0] if args[0] in (int, float) else str
        p.add_argument(*flags, **kw)
    p.add_argument("-v", "--verbose", action="store_true", help="log what is measured")
    return p


def options(argv: list[str] | None = None) -> tuple[BenchCommand, bool]:
    """The command the arguments mean (preset filled in, validated) and whether to log."""
    from selectllm_local.config import BenchCommand

    a = vars(parser().parse_args(argv))
    verbose = a.pop("verbose")
    return BenchCommand.of(**a), verbose


def main(argv: list[str] | None = None) -> int:
    from selectllm_local.bench.command import bench_command
    from selectllm_local.errors import UserError, expected_failure

    try:
        cmd, verbose = options(argv)
        logging.basicConfig(
            level=logging.INFO if verbose else logging.WARNING, format="%(message)s"
        )
        doc, text = bench_command(cmd, progress=True)
    except (UserError, ModuleNotFoundError, OSError) as exc:
        err = expected_failure(exc, feature="benchmarks/bench_select.py")
        if err is None:
            raise
        print(f"Error: {err}", file=sys.stderr)
        return 2
    print(text)
    if cmd.dry_run or "results" not in doc:
        print(json.dumps(doc, default=str))
    else:
        print(json.dumps({r["label"]: round(r["prompt_tokens_per_s"], 1) for r in doc["results"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
