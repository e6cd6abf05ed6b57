"""This machine's matmul peak: the denominator of every utilisation figure in bench_select.

    python benchmarks/bench_matmul.py                 # auto dtype, default size
    python benchmarks/bench_matmul.py --dtype bfloat16 --dtype float32 --size 1024 --size 2048

Times ``torch.nn.functional.linear`` (the call engines make for every projection) after two
warm-ups, prints best and median GFLOP/s per dtype and size, and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--dtype", action="append", help="auto | bfloat16 | float16 | float32 (repeatable)"
    )
    p.add_argument("--size", type=int, action="append", help="square matrix size (repeatable)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()

    from rich.console import Console
    from rich.table import Table

    from selectllm_local import hardware

    device = a.device or hardware.default_device()
    dtypes = [hardware.resolve_dtype(d, device) for d in (a.dtype or ["auto"])]
    rows = [
        hardware.measure_matmul(d, device, s, a.repeats) for d in dtypes for s in (a.size or [None])
    ]
    t = Table(title=f"matmul peak on {device} ({hardware.cpu_model()})", title_justify="left")
    for c in ("dtype", "size", "best GFLOP/s", "median GFLOP/s"):
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(r.dtype, str(r.size), f"{r.best_flops / 1e9:.1f}", f"{r.median_flops / 1e9:.1f}")
    Console().print(t)
    print(json.dumps([dataclasses.asdict(r) for r in rows]))


if __name__ == "__main__":
    main()
