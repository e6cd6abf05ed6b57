"""Score a fine-tuned model on a held-out test set: one evaluation folder, resumable by stage.

The paper's two metrics, computed offline: greedy answers from base model + LoRA adapter for every
test prompt (the same Alpaca-style prompt the model was trained on), then against the reference
answer Rouge-L F1 and embedding cosine similarity; beside them the mean per-token NLL of the
reference answers. The parts live beside this module: ``testset`` (reading test sets, cutting
prompts), ``answers`` (running the model through the backends), ``scores`` (the two metrics) and
``refnll`` (the reference NLL); this module runs them into one folder (:func:`evaluate_run`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from selectllm_local.evaluation.answers import generate_answers, reference_nll, resolve_backend
from selectllm_local.evaluation.scores import score
from selectllm_local.evaluation.testset import TestExample, load_testset

if TYPE_CHECKING:
    from selectllm_local.config import EvaluateConfig

log = logging.getLogger(__name__)

PREDICTIONS, NLL_FILE, SCORES = "predictions.jsonl", "reference_nll.jsonl", "scores.json"


@dataclass
class EvalOutcome:
    out_dir: Path
    n: int
    rougeL_f1: float
    cosine: float
    backend: str
    seconds: float
    """Seconds of the answers and their scores (as recorded when they were made)."""
    reference_nll: float | None = None
    """Mean over the NLL rows of each row's mean per-token NLL (nats; lower is better)."""
    nll_rows: int = 0
    nll_seconds: float = 0.0
    reused: list[str] = field(default_factory=list)
    """Stages found finished in ``out_dir`` (``resume``): "answers", "reference_nll"."""

    def to_dict(self) -> dict[str, Any]:
        """``evaluate --json``."""
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d


def default_rows(n: int, config: EvaluateConfig) -> tuple[list[int], list[int]]:
    """(answered rows, NLL rows) of a test set of ``n`` examples: the first ``limit`` and the
    first ``nll_limit`` (default: the answered rows; 0: none)."""
    rows = list(range(min(n, config.limit or n)))
    nll = rows if config.nll_limit is None else list(range(min(n, config.nll_limit)))
    return rows, list(nll)


def nll_key(examples: Sequence[TestExample], rows: Sequence[int], config: EvaluateConfig) -> str:
    """What the NLL stage's numbers depend on besides the model: the rows and their texts, the
    prompt cut and the tokens scored."""
    from selectllm_local.run.store import stable_hash

    return stable_hash(
        {
            "rows": [int(r) for r in rows],
            "texts": stable_hash(
                [(examples[r].instruction, examples[r].input, examples[r].reference) for r in rows]
            ),
            "max_prompt_tokens": config.max_prompt_tokens,
            "nll_max_tokens": config.nll_max_tokens,
        }
    )


def evaluate_run(
    test_set: Path | str,
    *,
    base_model: str | Path,
    adapter: str | Path | None,
    out_dir: Path,
    config: EvaluateConfig | None = None,
    progress: bool = True,
    rows: Sequence[int] | None = None,
    nll_rows: Sequence[int] | None = None,
    resume: bool = False,
) -> EvalOutcome:
    """Answer and score the test rows, and score the reference NLL, into ``out_dir``.

    Files: ``predictions.jsonl`` (one line per answered row; ``row`` is the example's index in the
    loaded test set), ``reference_nll.jsonl`` (``{"row", "nll", "tokens"}`` per NLL row) and
    ``scores.json`` (the means; ``reference_nll`` and ``nll_rows`` among them), each written
    atomically. ``rows`` / ``nll_rows`` are indices into the test set [default: ``default_rows``].
    With ``resume`` the answers already in ``out_dir`` (for the same rows) are kept, and so is an
    NLL stage of the same ``nll_key``: only what is missing is computed (a folder evaluated before
    the NLL existed gains it without new answers). The caller vouches for model and adapter.
    """
    from selectllm_local.config import EvaluateConfig

    config = config or EvaluateConfig()
    examples = load_testset(test_set)
    answer_rows, default_nll = default_rows(len(examples), config)
    rows = [int(r) for r in (answer_rows if rows is None else rows)]
    nll_rows = [int(r) for r in (default_nll if nll_rows is None else nll_rows)]
    bad = [r for r in rows + nll_rows if not 0 <= r < len(examples)]
    if bad:
        raise ValueError(f"test rows {bad[:5]} outside 0..{len(examples) - 1} of {test_set}")
    out = Path(out_dir)
    model_kw: dict[str, Any] = {"base_model": base_model, "adapter": adapter, "config": config}
    reused: list[str] = []
    scores = _finished_answers(out, examples, rows) if resume else None
    if scores is None:
        scores = _answer_stage(out, examples, rows, test_set, progress=progress, **model_kw)
    else:
        reused.append("answers")
    key = nll_key(examples, nll_rows, config)
    if not nll_rows:
        (out / NLL_FILE).unlink(missing_ok=True)  # none asked for: no stale file either
        scores.update(reference_nll=None, nll_rows=0, nll=None)
        _write_scores(out, scores)
    elif resume and (scores.get("nll") or {}).get("key") == key and (out / NLL_FILE).exists():
        reused.append("reference_nll")
    else:
        scores = _nll_stage(out, examples, nll_rows, key, scores, progress=progress, **model_kw)
    outcome = EvalOutcome(
        out,
        scores["n"],
        scores["rougeL_f1"],
        scores["cosine"],
        scores["backend"],
        float(scores["seconds"]),
        scores.get("reference_nll"),
        int(scores.get("nll_rows") or 0),
        float((scores.get("nll") or {}).get("seconds", 0.0)),
        reused,
    )
    log.info(
        "Rouge-L F1 %.4f, cosine %.4f on %d examples; reference NLL %s on %d",
        outcome.rougeL_f1,
        outcome.cosine,
        outcome.n,
        "-" if outcome.reference_nll is None else f"{outcome.reference_nll:.4f}",
        outcome.nll_rows,
    )
    return outcome


def _write_scores(out: Path, scores: dict[str, Any]) -> None:
    from selectllm_local.run.store import write_json

    write_json(out / SCORES, scores)


def _finished_answers(
    out: Path, examples: list[TestExample], rows: list[int]
) -> dict[str, Any] | None:
    """The scores of answers already in ``out`` for exactly these rows, else None. Answers
    written before rows were recorded gain their ``row`` (checked against the texts)."""
    from selectllm_local.run.store import read_json, read_jsonl, write_jsonl

    if not ((out / SCORES).exists() and (out / PREDICTIONS).exists()):
        return None
    preds = read_jsonl(out / PREDICTIONS)
    if len(preds) != len(rows) or any(
        p.get("row", r) != r
        or p.get("reference") != examples[r].reference
        or p.get("instruction") != examples[r].instruction
        for p, r in zip(preds, rows, strict=True)
    ):
        return None
    if any("row" not in p for p in preds):
        write_jsonl(out / PREDICTIONS, ({"row": r, **p} for p, r in zip(preds, rows, strict=True)))
    scores: dict[str, Any] = read_json(out / SCORES)
    return scores


def _answer_stage(
    out: Path,
    examples: list[TestExample],
    rows: list[int],
    test_set: Path | str,
    *,
    base_model: str | Path,
    adapter: str | Path | None,
    config: EvaluateConfig,
    progress: bool,
) -> dict[str, Any]:
    """Generate and score the answers of ``rows``; write predictions.jsonl and scores.json."""
    from selectllm_local.run.store import write_jsonl

    t0 = time.perf_counter()
    chosen = resolve_backend(config.engine.backend, adapter=adapter)
    picked = [examples[r] for r in rows]
    preds = generate_answers(
        picked,
        base_model=base_model,
        adapter=adapter,
        config=dataclasses.replace(
            config, engine=dataclasses.replace(config.engine, backend=chosen)
        ),
        progress=progress,
    )
    scores = score(preds, [e.reference for e in picked])
    seconds = time.perf_counter() - t0
    per = scores.pop("per_example")
    write_jsonl(
        out / PREDICTIONS,
        (
            {
                "row": r,
                "instruction": e.instruction,
                "input": e.input,
                "reference": e.reference,
                "prediction": p,
                "rougeL_f1": rl,
                "cosine": c,
            }
            for r, e, p, rl, c in zip(
                rows, picked, preds, per["rougeL_f1"], per["cosine"], strict=True
            )
        ),
    )
    scores.update(
        backend=chosen,
        base_model=str(base_model),
        adapter=str(adapter) if adapter else None,
        test_set=str(test_set),
        max_new_tokens=config.max_new_tokens,
        seconds=round(seconds, 3),
    )
    _write_scores(out, scores)
    return scores


def _nll_stage(
    out: Path,
    examples: list[TestExample],
    rows: list[int],
    key: str,
    scores: dict[str, Any],
    *,
    base_model: str | Path,
    adapter: str | Path | None,
    config: EvaluateConfig,
    progress: bool,
) -> dict[str, Any]:
    """Score the reference NLL of ``rows``; write reference_nll.jsonl, then add it to scores.json
    (so a run killed in between recomputes only this stage)."""
    from selectllm_local.run.store import write_jsonl

    t0 = time.perf_counter()
    res = reference_nll(
        [examples[r] for r in rows],
        base_model=base_model,
        adapter=adapter,
        config=config,
        progress=progress,
    )
    seconds = time.perf_counter() - t0
    write_jsonl(
        out / NLL_FILE,
        ({"row": r, "nll": x.nll, "tokens": x.tokens} for r, x in zip(rows, res, strict=True)),
    )
    scores = {
        **scores,
        "reference_nll": float(np.mean([x.nll for x in res])),
        "nll_rows": len(res),
        "nll": {
            "key": key,
            "max_tokens": config.nll_max_tokens,
            "tokens": int(sum(x.tokens for x in res)),
            "seconds": round(seconds, 3),
        },
    }
    _write_scores(out, scores)
    return scores
