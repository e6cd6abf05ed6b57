"""How far logprob-mode scores drift with batching, and whether the tie rule absorbs it.

A prompt's logits are not bit-identical across batch compositions: a different batch changes
the padding, the matmul shapes and so the order of float additions (and Ray shards and resumed
runs batch differently). Logprob mode ranks candidates by these numbers, so a drift larger than
the gap between two candidates flips a pick. ``picks.top_k_tied`` counts scores within
``TIE_TOLERANCE`` of the cut as tied and breaks ties by a seeded hash; this script measures the
drift that the tolerance has to exceed, and the margins it has to stay below.

For each model/backend/dtype it runs the same logprob-mode selection (one seeded held-out sample
of the example pool) with the scoring calls cut into chunks of each ``--chunks`` size (1: every
prompt alone; 0: all prompts in one call, batched by the backend) and reports:

- ``label_drift_max``: the largest change of one label log-probability between chunkings;
- ``score_drift_max``: the same for the aggregated per-candidate score the picks use;
- ``margins``: how many subsets have a decision margin (k-th minus (k+1)-th best score) below
  1e-6 .. 1e-2 nats (those below the tolerance are decided by the tie rule);
- ``flips_plain`` / ``flips_tie_rule``: subsets whose chosen set differs between chunkings,
  by a plain sort and by the tie rule.

    python benchmarks/bench_tie_drift.py --models tiny smollm2-135m-instruct \\
        --backends transformers vllm --out benchmarks/results/tie_drift_cpu2.json
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT / "examples" / "dolly_sample_1500.jsonl"
THRESHOLDS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


def held_out_pool(out: Path, rows: int, seed: int) -> Path:
    """A seeded sample of the example pool (not its first rows, which the tests use)."""
    lines = POOL.read_text("utf-8").splitlines()
    picked = sorted(random.Random(seed).sample(range(300, len(lines)), rows))
    path = out / f"heldout{rows}_s{seed}.jsonl"
    path.write_text("\n".join(lines[i] for i in picked) + "\n", "utf-8")
    return path


class Chunked:
    """A backend proxy whose ``score_labels`` sends prompts ``size`` at a time (0: all at once),
    last chunk first, and keeps every raw label score by prompt text."""

    def __init__(self, inner: Any, size: int) -> None:
        self.inner, self.size, self.raw = inner, size, {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def score_labels(self, prompts, labels, *, progress=False, on_output=None):  # noqa: ANN001, ANN201
        size = self.size or len(prompts)
        starts = list(range(0, len(prompts), size))[::-1]
        out: list[list[float]] = [[] for _ in prompts]
        for a in starts:

            def cb(i: int, scores: list[float], a: int = a) -> None:
                out[a + i] = scores
                self.raw[str(prompts[a + i])] = list(scores)
                if on_output is not None:
                    on_output(a + i, scores)

            self.inner.score_labels(prompts[a : a + size], labels[a : a + size], on_output=cb)
        return out


def one_run(planned: Any, backend: Any, size: int, seed: int) -> dict[str, Any]:
    from selectllm_local.config import SelectorConfig
    from selectllm_local.selection import logprobs, picks
    from selectllm_local.selection.rounds import select

    scores: dict[tuple[int, ...], list[float]] = {}  # by the subset's tie keys (its identity)
    original = picks.top_k_tied

    def spy(s: list[float], k: int, keys: list[int], tolerance: float = picks.TIE_TOLERANCE):  # noqa: ANN202
        scores[tuple(keys)] = list(s)
        return original(s, k, keys, tolerance)

    logprobs.top_k_tied = spy  # type: ignore[assignment]
    try:
        proxy = Chunked(backend, size)
        out = select(
            planned.plan, planned.items, proxy, cfg=SelectorConfig(mode="logprobs", seed=seed),
            progress=False,
        )  # fmt: skip
    finally:
        logprobs.top_k_tied = original  # type: ignore[assignment]
    by_key = {k: r for k, r in out.results.items() if r.attempts}
    return {"results": by_key, "raw": proxy.raw, "scores": scores, "selected": out.selected}


def compare(runs: list[dict[str, Any]], k_of: dict[tuple[int, ...], int]) -> dict[str, Any]:
    from selectllm_local.selection.picks import TIE_TOLERANCE

    ref = runs[0]
    label = max(
        (abs(a - b) for r in runs[1:] for p, v in r["raw"].items()
         for a, b in zip(v, ref["raw"][p], strict=True)),
        default=0.0,
    )  # fmt: skip
    score = max(
        (abs(a - b) for r in runs[1:] for j, v in r["scores"].items()
         for a, b in zip(v, ref["scores"][j], strict=True)),
        default=0.0,
    )  # fmt: skip
    margins = [r.margin for r in ref["results"].values() if r.margin is not None]

    def plain(s: list[float], k: int) -> set[int]:
        return set(sorted(range(len(s)), key=lambda j: (-s[j], j))[:k])

    flips_plain = sum(
        1 for r in runs[1:] for j, v in r["scores"].items()
        if plain(v, k_of[j]) != plain(ref["scores"][j], k_of[j])
    )  # fmt: skip
    flips_tie = sum(
        1 for r in runs[1:] for key in ref["results"]
        if set(r["results"][key].picks) != set(ref["results"][key].picks)
    )  # fmt: skip
    return {
        "subsets": len(ref["results"]),
        "label_drift_max": label,
        "score_drift_max": score,
        "tolerance": TIE_TOLERANCE,
        "margins_below": {f"{t:g}": sum(1 for m in margins if m < t) for t in THRESHOLDS},
        "decided_by_tie_rule": sum(1 for r in ref["results"].values() if r.tie_rule),
        "flips_plain": flips_plain,
        "flips_tie_rule": flips_tie,
        "same_selection": all(r["selected"] == ref["selected"] for r in runs[1:]),
    }


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    from selectllm_local.backends import load_backend
    from selectllm_local.config import EngineConfig, PlanConfig
    from selectllm_local.models.random_weights import build_random_model
    from selectllm_local.models.registry import fetch_model
    from selectllm_local.run.pipeline import plan_run

    tmp = Path(tempfile.mkdtemp(prefix="tie-drift-"))
    out = []
    for pool_seed in args.pool_seeds:
        pool = held_out_pool(tmp, args.rows, pool_seed)
        planned = plan_run(
            PlanConfig(pool=pool, budget=args.budget, run_dir=tmp / f"plan{pool_seed}",
                       n_clusters=args.k),
            progress=False,
        )  # fmt: skip
        from selectllm_local.selection.picks import tie_key

        k_of = {
            tuple(tie_key(args.seed, planned.items[i].uid) for i in s.candidates): s.k
            for s in planned.plan.subsets
        }
        for model in args.models:
            path = (
                build_random_model(tmp / "tiny", "tiny-qwen2", seed=0)
                if model == "tiny"
                else fetch_model(model)
            )
            for backend in args.backends:
                for dtype in args.dtypes:
                    opts = EngineConfig(dtype=dtype, max_model_len=4096, enforce_eager=True)
                    engine = load_backend(backend, str(path), opts)
                    try:
                        runs = [one_run(planned, engine, c, args.seed) for c in args.chunks]
                    finally:
                        engine.close()
                    row = {"model": model, "backend": backend, "dtype": dtype,
                           "pool_seed": pool_seed, "chunks": args.chunks,
                           **compare(runs, k_of)}  # fmt: skip
                    print(json.dumps(row))
                    out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "smollm2-135m-instruct"])
    ap.add_argument("--backends", nargs="+", default=["transformers", "vllm"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--budget", type=int, default=20)
    ap.add_argument("--k", type=int, default=10, help="candidates per prompt")
    ap.add_argument("--chunks", type=int, nargs="+", default=[0, 1, 3])
    ap.add_argument("--pool-seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--machine", default="")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = measure(args)
    print(f"{'model':24} {'backend':12} {'dtype':9} {'label drift':>11} {'score drift':>11} "
          f"{'<1e-3':>5} {'flips':>5} {'flips(tie)':>10}")  # fmt: skip
    for r in rows:
        print(f"{r['model']:24} {r['backend']:12} {r['dtype']:9} {r['label_drift_max']:11.2e} "
              f"{r['score_drift_max']:11.2e} {r['margins_below']['0.001']:5d} "
              f"{r['flips_plain']:5d} {r['flips_tie_rule']:10d}")  # fmt: skip
    if args.out:
        import platform

        doc = {"benchmark": "tie_drift", "machine": args.machine or platform.node(),
               "rows": rows}  # fmt: skip
        args.out.write_text(json.dumps(doc, indent=1) + "\n", "utf-8")


if __name__ == "__main__":
    main()
