"""Our code's CPU time per selection prompt, with the engine taken out.

``select`` spends time outside the engine on every prompt: rendering the template, counting and
cutting candidates, fitting the prompt to the context, tokenizing it for the batch, building the
decoding constraint and parsing the answer. On a GPU that serial work was about half of the
selection stage (issue 10), and none of it needs the GPU, so it is measured here on the CPU.

The backend is the real transformers backend (``HFBackend``) with a real trained tokenizer, whose
model is replaced by a stub that answers ``[1]``-style ids at once: everything but the forward
passes is the production path. Workload: Dolly rows, ``--subsets`` prompts of ``--candidates``
candidates cut to ``--max-candidate-tokens``, the benchmark's strided subset layout. Reported:
median over ``--repeats`` of (select seconds - engine seconds) / prompts, in ms, plus a cProfile
breakdown of one extra repeat. Tokenizers: ``tiny`` (the tests' 1k-token BPE) and ``pool`` (a
32k BPE trained on the pool, about a real LLM tokenizer's length per token).

    python benchmarks/bench_overhead.py --label before --out benchmarks/results/overhead_before.json
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POOL = ROOT / "examples" / "dolly_sample_1500.jsonl"
KEYS = [
    "benchmark", "label", "tokenizer", "vocab_size", "mode", "prompts", "candidates",
    "max_candidate_tokens", "repeats", "ms_per_prompt_median", "ms_per_prompt_all",
    "cpu_ms_per_prompt_median", "load_average_before", "tokenizers_parallelism",
    "prompt_tokens_per_prompt", "target_ms_per_prompt", "profile_top", "environment",
]  # fmt: skip


class _StubModel:
    """Stands in for the forward passes: answers the first ``k`` ids (or flat logits) at once."""

    def __init__(self, answer_ids: list[int], vocab: int) -> None:
        self.answer_ids, self.vocab = answer_ids, vocab

    def generate(self, input_ids: Any, **_: Any) -> Any:
        import torch

        ans = torch.tensor(self.answer_ids, dtype=input_ids.dtype).expand(input_ids.shape[0], -1)
        return torch.cat([input_ids, ans], dim=1)

    def __call__(self, input_ids: Any, **_: Any) -> Any:
        import torch

        logits = torch.zeros(input_ids.shape[0], 1, self.vocab)
        return type("Out", (), {"logits": logits})()


def _backend(model_dir: Path, tokenizer: Any) -> Any:
    from selectllm_local.backends import BackendOptions
    from selectllm_local.backends.hf_backend import HFBackend

    backend = HFBackend(str(model_dir), BackendOptions(dtype="float32", device="cpu"))
    tokenizer.padding_side = "left"
    backend.tokenizer = tokenizer
    backend._has_template = True
    answer = tokenizer.encode("[1]", add_special_tokens=False) + [tokenizer.eos_token_id]
    backend.model = _StubModel(answer, len(tokenizer))
    return backend


def _tokenizer(kind: str, items: list[Any], tmp: Path) -> Any:
    from selectllm_local import data, tinymodel
    from selectllm_local.bench.model import train_pool_tokenizer

    if kind == "tiny":
        return tinymodel.build_tokenizer(tmp / "tok-tiny")
    texts = [data.embedding_text(it) for it in items]
    return train_pool_tokenizer(tmp / "tok-pool", texts)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from selectllm_local import data, selection, tinymodel
    from selectllm_local.bench import run as bench

    items, _ = data.load_pool(args.pool)
    need = args.subsets * args.candidates
    items = [dataclasses.replace(it, index=i) for i, it in enumerate(items[:need])]
    if len(items) < need:
        sys.exit(f"the pool has {len(items)} rows; {need} are needed")
    load0 = list(os.getloadavg())
    plan = bench.strided_plan(args.subsets, args.candidates, args.picks)
    cfg = selection.SelectionSettings(
        mode=args.mode, max_candidate_tokens=args.max_candidate_tokens, retries=0
    )
    with tempfile.TemporaryDirectory(prefix="selectllm-overhead-") as tmp_s:
        tmp = Path(tmp_s)
        tok = _tokenizer(args.tokenizer, items, tmp)
        model_dir = tinymodel.build_random_model(tmp / "model", "tiny-qwen2")
        backend = _backend(model_dir, tok)
        times, cpu_times, ptoks = [], [], 0
        # Each repeat is a fresh selection (caches are per run), as a new `select` would be.
        for _ in range(args.repeats + 1):  # the first is a warm-up
            eng0 = backend.stats["engine_seconds"]
            t0, c0 = time.perf_counter(), time.process_time()
            out = selection.select(plan, items, backend, cfg=cfg, progress=False)
            eng = backend.stats["engine_seconds"] - eng0
            times.append((time.perf_counter() - t0 - eng) * 1000 / len(plan.subsets))
            # CPU time of this process (all threads): what the work costs on an idle machine,
            # robust to other jobs sharing the cores; the stub engine's share is negligible.
            cpu_times.append((time.process_time() - c0) * 1000 / len(plan.subsets))
            ptoks = out.counts["prompt_tokens"]
        prof = cProfile.Profile()
        prof.enable()
        selection.select(plan, items, backend, cfg=cfg, progress=False)
        prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    top = []
    for (file, line, fn), (_cc, nc, tt, ct, _) in sorted(
        stats.stats.items(),  # type: ignore[attr-defined]
        key=lambda kv: -kv[1][3],
    )[:25]:
        where = f"{Path(file).name}:{line}:{fn}"
        top.append({"function": where, "calls": nc, "cum_ms_per_prompt": round(ct * 1000 / len(plan.subsets), 3), "self_ms_per_prompt": round(tt * 1000 / len(plan.subsets), 3)})  # fmt: skip
    timed = times[1:]
    return {
        "benchmark": "overhead",
        "label": args.label,
        "tokenizer": args.tokenizer,
        "vocab_size": len(tok),
        "mode": args.mode,
        "prompts": len(plan.subsets),
        "candidates": args.candidates,
        "max_candidate_tokens": args.max_candidate_tokens,
        "repeats": args.repeats,
        "ms_per_prompt_median": round(statistics.median(timed), 3),
        "ms_per_prompt_all": [round(t, 3) for t in timed],
        "cpu_ms_per_prompt_median": round(statistics.median(cpu_times[1:]), 3),
        "load_average_before": load0,
        # as `selectllm` runs it: unset = the Rust tokenizer's batches use every core
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "unset"),
        "prompt_tokens_per_prompt": round(ptoks / len(plan.subsets), 1),
        "target_ms_per_prompt": 5.0,
        "profile_top": top,
        "environment": bench.bench_environment(args.machine),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=Path, default=DEFAULT_POOL)
    ap.add_argument("--tokenizer", choices=["tiny", "pool"], action="append")
    ap.add_argument("--mode", choices=["generate", "logprobs"], action="append")
    ap.add_argument("--candidates", type=int, action="append", help="default: 11 and 14")
    ap.add_argument("--subsets", type=int, default=96)
    ap.add_argument("--picks", type=int, default=1)
    ap.add_argument("--max-candidate-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--label", default="")
    ap.add_argument("--machine", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    runs = []
    for tok in args.tokenizer or ["pool"]:
        for mode in args.mode or ["generate", "logprobs"]:
            for k in args.candidates or [11, 14]:
                one = argparse.Namespace(**{**vars(args), "tokenizer": tok, "mode": mode,
                                            "candidates": k})  # fmt: skip
                res = measure(one)
                runs.append({key: res[key] for key in KEYS})
                print(f"{tok:5s} {mode:9s} K={k:2d}: {res['ms_per_prompt_median']:8.3f} ms/prompt wall, "
                      f"{res['cpu_ms_per_prompt_median']:8.3f} ms CPU "
                      f"({res['prompt_tokens_per_prompt']:.0f} prompt tokens)")  # fmt: skip
                for row in res["profile_top"][:8]:
                    print(f"    {row['cum_ms_per_prompt']:8.3f} {row['function']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"runs": runs}, indent=2) + "\n", "utf-8")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
