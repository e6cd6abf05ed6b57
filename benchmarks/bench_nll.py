"""Cost of the reference NLL per 1,000 test rows, beside the cost of the answers it sits next to.

The reference NLL (``evaluation.answers.reference_nll``) reads prompt + reference once with teacher
forcing: a forward pass over every token, compute-bound like a prefill, with no decode loop. The
answers behind Rouge-L and cosine are decoded token by token (up to ``max_new_tokens``), and on a
CPU each decode step re-reads every weight, so they cost far more per row. This script measures
both on the same rows of the paper's Dolly test split, with SmolLM2-135M-Instruct + a LoRA adapter
(rank 16 on q/v, merged into the weights as the evaluation does), in float32 on a CPU.

Each measurement runs ``--repeats`` times after a warm-up; the median wall and CPU seconds are
scaled to 1,000 rows (the rows are a seeded sample, so their lengths are typical). CPU time is
recorded beside wall time: on a shared machine wall time stretches, CPU time much less.

    python benchmarks/bench_nll.py --rows 96 --answer-rows 16 --out benchmarks/results/nll_cpu2_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from selectllm_local.config import EngineConfig, EvaluateConfig
from selectllm_local.evaluation.answers import generate_answers, reference_nll
from selectllm_local.evaluation.testset import load_testset
from selectllm_local.run.rundir import environment

REPO = Path(__file__).resolve().parents[1]
TESTSET = REPO / "examples" / "testsets" / "dolly"


def make_adapter(base: Path, out: Path, rank: int = 16) -> Path:
    """A LoRA adapter of the experiment's shape, its B matrices nudged off zero (seeded), so the
    merged weights differ from the base as a trained adapter's do."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 1e-3)
    peft.save_pretrained(out)
    return out


def timed(fn: object, repeats: int, warm: object) -> tuple[float, float, object]:
    """Median wall and CPU seconds of ``repeats`` calls of ``fn`` (after a small warm-up call)."""
    warm()  # type: ignore[operator]
    result = None
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        result = fn()  # type: ignore[operator]
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), result


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="smollm2-135m-instruct", help="known name or local folder")
    ap.add_argument("--rows", type=int, default=96, help="test rows NLL-scored per repeat")
    ap.add_argument("--answer-rows", type=int, default=16, help="test rows answered per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--machine", default="2-core AMD EPYC VM, shared with other jobs (loaded)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from selectllm_local.models.registry import resolve_model_path

    base = Path(resolve_model_path(args.model, flag="--model"))
    tests = load_testset(TESTSET)
    pick = np.sort(np.random.default_rng(0).choice(len(tests), args.rows, replace=False))
    rows = [tests[int(i)] for i in pick]
    cfg = EvaluateConfig(
        engine=EngineConfig(backend="transformers", batch_size=args.batch_size),
        max_new_tokens=args.max_new_tokens,
        max_prompt_tokens=512,
        nll_max_tokens=256,
    )
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        adapter = make_adapter(base, Path(tmp) / "adapter")
        kw = {"base_model": base, "adapter": adapter, "config": cfg, "progress": False}
        nll_wall, nll_cpu, res = timed(
            lambda: reference_nll(rows, **kw), args.repeats, lambda: reference_nll(rows[:2], **kw)
        )
        answer_rows = rows[: args.answer_rows]
        gen_wall, gen_cpu, _ = timed(
            lambda: generate_answers(answer_rows, **kw),
            args.repeats,
            lambda: generate_answers(rows[:1], **kw),
        )
    load_after = os.getloadavg()
    tokens = sum(r.tokens for r in res)  # type: ignore[attr-defined]
    per_k = 1000 / len(rows)
    per_k_ans = 1000 / len(answer_rows)
    out = {
        "bench": "reference_nll",
        "machine": args.machine,
        "model": args.model,
        "adapter": "LoRA r16 q/v, merged",
        "dtype": "float32",
        "test_set": "paper Dolly test split (examples/testsets/dolly), seeded sample",
        "repeats": args.repeats,
        "nll": {
            "rows": len(rows),
            "scored_tokens": tokens,
            "batch_size": args.batch_size,
            "max_tokens": cfg.nll_max_tokens,
            "seconds": round(nll_wall, 2),
            "cpu_seconds": round(nll_cpu, 2),
            "seconds_per_1000_rows": round(nll_wall * per_k, 1),
            "cpu_seconds_per_1000_rows": round(nll_cpu * per_k, 1),
        },
        "answers": {
            "rows": len(answer_rows),
            "max_new_tokens": args.max_new_tokens,
            "seconds": round(gen_wall, 2),
            "cpu_seconds": round(gen_cpu, 2),
            "seconds_per_1000_rows": round(gen_wall * per_k_ans, 1),
            "cpu_seconds_per_1000_rows": round(gen_cpu * per_k_ans, 1),
        },
        "answers_over_nll_per_row": round((gen_wall * per_k_ans) / (nll_wall * per_k), 1),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "note": "the machine was shared and loaded (see loadavg): wall times are upper bounds; "
        "both include loading the model (a few seconds) once per call",
        "environment": {**environment(), "python": platform.python_version()},
    }
    print(
        f"reference NLL: {out['nll']['seconds_per_1000_rows']} s per 1,000 rows "
        f"({out['nll']['cpu_seconds_per_1000_rows']} CPU s); answers: "
        f"{out['answers']['seconds_per_1000_rows']} s per 1,000 rows; "
        f"ratio {out['answers_over_nll_per_row']}x",
        file=sys.stderr,
    )
    line = json.dumps(out)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(line)


if __name__ == "__main__":
    main()
