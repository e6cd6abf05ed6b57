"""The reproduction check's comparison (check.md).

python experiments/results/smollm2_dolly_issue9/repro/compare.py RUN_DIR COPY_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PLAN = "plans/b200-s0-select-logprobs"
RESENT = range(180, 200)  # the subsets whose answers repro.sh deleted


def _rows(path: Path) -> dict[int, dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return {r["subset_id"]: r for r in map(json.loads, f)}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _load(path: Path) -> Any:
    return json.loads(path.read_text("utf-8"))


def main(run: Path, copy: Path) -> None:
    say = sys.stdout.write
    o, r = _rows(run / PLAN / "responses.jsonl"), _rows(copy / PLAN / "responses.jsonl")
    picks = sum(o[i]["picks"] == r[i]["picks"] for i in RESENT)
    diffs = [
        abs(a - b) for i in RESENT for a, b in zip(o[i]["scores"], r[i]["scores"], strict=True)
    ]
    say(f"re-sent subsets: picks equal {picks}/{len(RESENT)}; per-candidate scores: {len(diffs)} "
        f"compared, {sum(d == 0 for d in diffs)} equal, max |diff| {max(diffs):.1e}\n")  # fmt: skip
    kept = all(o[i] == r[i] for i in range(RESENT.start))
    say(f"the {RESENT.start} kept rows of responses.jsonl identical: {kept}\n")
    a, b = _jsonl(run / PLAN / "selected.jsonl"), _jsonl(copy / PLAN / "selected.jsonl")
    differ = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    only_score = all(
        {k for k in x["selectllm"] if x["selectllm"][k] != y["selectllm"][k]} == {"score"}
        and {k for k in x if x[k] != y[k]} == {"selectllm"}
        for x, y in ((a[i], b[i]) for i in differ)
    )
    say(f"selected.jsonl: {len(differ)} of {len(a)} rows differ, only in 'score': {only_score}\n")
    same_bias = (
        _load(run / PLAN / "summary.json")["position_bias"]
        == _load(copy / PLAN / "summary.json")["position_bias"]
    )
    say(f"position diagnostic equal: {same_bias}\n")
    for cell in ("select-logprobs/b200-s0", "random/b200-s0"):
        x, y = run / "cells" / cell, copy / "cells" / cell
        say(
            f"{cell}: selection equal {_load(x / 'selection.json') == _load(y / 'selection.json')}\n"
        )
        dx, dy = _load(x / "done.json"), _load(y / "done.json")
        for k in ("rougeL_f1", "cosine", "train_loss"):
            say(f"  {k}: {dx[k]:.6f} -> {dy[k]:.6f} ({dy[k] - dx[k]:+.1e})\n")
        px, py = _jsonl(x / "eval/predictions.jsonl"), _jsonl(y / "eval/predictions.jsonl")
        same = sum(p["prediction"] == q["prediction"] for p, q in zip(px, py, strict=True))
        say(f"  answers identical: {same}/{len(px)}\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
