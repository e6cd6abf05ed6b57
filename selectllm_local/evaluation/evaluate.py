"""Score a fine-tuned model on a held-out test set: Rouge-L F1 and embedding cosine similarity.

The paper's two metrics, computed offline: greedy answers from base model + LoRA adapter for every
test prompt (the same Alpaca-style prompt the model was trained on), then against the reference
answer the Rouge-L F1 of ``rouge-score`` (its default tokeniser, no stemming) and the cosine
similarity of all-MiniLM-L6-v2 sentence embeddings (the packaged copy, no hub).

Answers are generated through ``backends`` (the same engines the selection uses; the adapter goes
in as the engine's ``lora_path``), with the backends' one ``auto`` policy: vLLM when installed,
except that an adapter without a GPU goes to transformers. Prompts are the raw Alpaca-style text
(no chat template); one longer than ``max_prompt_tokens`` is cut in its *input*, as training cuts
it (:func:`fit_prompts`), so the instruction and the "### Response:" cue survive; answers are
decoded greedily. On a CPU the model runs in float32 (exact sums, as in training).

Test sets: a JSONL/JSON list of records (``instruction``/``input``/``output``, or Dolly's
``context``/``response``), or the paper's pair of files ``prompt_format.json`` + ``test_gts.json``
(a folder holding both, or either file).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from selectllm_local.errors import UserError
from selectllm_local.evaluation.refnll import RowNLL
from selectllm_local.training.trainset import as_example, render_prompt

if TYPE_CHECKING:
    from selectllm_local.config import EngineConfig, EvaluateConfig
    from selectllm_local.config.vocab import BackendName

log = logging.getLogger(__name__)

PAPER_FILES = ("prompt_format.json", "test_gts.json")
_PAPER_PROMPT = re.compile(
    r"### Instruction:\s*(?P<instruction>.*?)\s*(?:### Input:\s*(?P<input>.*?)\s*)?### Response:",
    re.DOTALL,
)


@dataclass(frozen=True)
class TestExample:
    instruction: str
    input: str
    reference: str

    @property
    def prompt(self) -> str:
        return render_prompt(self.instruction, self.input)


# -- test sets ---------------------------------------------------------------------------------


def load_testset(path: Path | str, *, limit: int | None = None) -> list[TestExample]:
    """Read a test set (see module docstring); every example must have a reference answer."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"Test set {p} does not exist. Check the path (--test-set).")
    if p.is_dir() or p.name in PAPER_FILES:
        folder = p if p.is_dir() else p.parent
        if not all((folder / f).exists() for f in PAPER_FILES):
            raise UserError(
                f"Test set folder {folder} must hold both {PAPER_FILES[0]} and {PAPER_FILES[1]} "
                "(the SelectLLM paper's format), or give a JSONL file of instruction/input/output."
            )
        examples = _load_paper_format(folder)
    else:
        examples = _load_records(p)
    if not examples:
        raise UserError(f"Test set {p} is empty.")
    return examples[:limit] if limit else examples


def _load_paper_format(folder: Path) -> list[TestExample]:
    prompts = json.loads((folder / PAPER_FILES[0]).read_text("utf-8"))
    refs = json.loads((folder / PAPER_FILES[1]).read_text("utf-8"))
    if not isinstance(prompts, list) or not isinstance(refs, list) or len(prompts) != len(refs):
        raise UserError(
            f"{folder}: {PAPER_FILES[0]} and {PAPER_FILES[1]} must be JSON lists of equal length "
            f"(got {len(prompts)} and {len(refs)})."
        )
    out = []
    for i, (prompt, ref) in enumerate(zip(prompts, refs, strict=True)):
        m = _PAPER_PROMPT.search(prompt)
        if m is None:
            raise UserError(
                f"{folder / PAPER_FILES[0]}: entry {i} is not an '### Instruction: ... ### Response:' prompt."
            )
        out.append(TestExample(m["instruction"].strip(), (m["input"] or "").strip(), str(ref)))
    return out


def _load_records(path: Path) -> list[TestExample]:
    rows: list[Any]
    if path.suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UserError(
                        f"Test set {path}, line {n}: not valid JSON ({exc.msg})."
                    ) from exc
    elif path.suffix == ".json":
        rows = json.loads(path.read_text("utf-8"))
    else:
        from selectllm_local.data import pool as data

        items, _ = data.load_pool(path)
        rows = list(items)
    out = []
    for n, row in enumerate(rows, 1):
        e = as_example(row)
        if not e["instruction"]:
            raise UserError(f"Test set {path}, record {n}: no 'instruction' field.")
        if not (e["output"] and str(e["output"]).strip()):
            raise UserError(
                f"Test set {path}, record {n}: no reference answer ('output' or 'response' field)."
            )
        out.append(TestExample(e["instruction"], e["input"] or "", str(e["output"])))
    return out


# -- generation --------------------------------------------------------------------------------


def resolve_backend(name: str, *, adapter: str | Path | None = None) -> BackendName:
    """The backends' ``auto`` policy for this evaluation (an adapter counts)."""
    from selectllm_local.backends import resolve_backend_name

    return resolve_backend_name(name, lora=adapter is not None)


def engine_options(config: EvaluateConfig, *, adapter: str | Path | None) -> EngineConfig:
    """The engine section an evaluation runs with (what ``load_backend`` takes): the evaluation's
    own ``engine`` with the adapter, the resolved backend and dtype and a context that fits."""
    from selectllm_local import hardware

    engine = config.engine
    extra: dict[str, Any] = dict(engine.extra)
    if adapter is not None:
        rank = int(json.loads((Path(adapter) / "adapter_config.json").read_text("utf-8"))["r"])
        extra["max_lora_rank"] = max(8, rank)
    return dataclasses.replace(
        engine,
        backend=resolve_backend(engine.backend, adapter=adapter),
        dtype=hardware.resolve_dtype(engine.dtype, cpu_auto="float32"),
        max_model_len=engine.max_model_len or config.max_prompt_tokens + config.max_new_tokens,
        lora_path=str(adapter) if adapter is not None else None,
        extra=extra,
    )


def _checked_model(base_model: str | Path, adapter: str | Path | None) -> Path:
    """The base model as a local folder; an adapter folder must hold its config."""
    from selectllm_local.models.registry import resolve_model_path

    base = Path(resolve_model_path(base_model, flag="--base-model"))  # .gguf / known name
    if not base.exists():
        raise UserError(f"Base model {base} does not exist: give a local model directory.")
    if adapter is not None and not (Path(adapter) / "adapter_config.json").exists():
        raise UserError(
            f"Adapter {adapter} has no adapter_config.json: give a fine-tuned adapter folder."
        )
    return base


def generate_answers(
    examples: list[TestExample],
    *,
    base_model: str | Path,
    adapter: str | Path | None = None,
    config: EvaluateConfig | None = None,
    progress: bool = True,
) -> list[str]:
    """Greedy answers of base model (+ adapter) for every example, in order."""
    from selectllm_local.backends import load_backend
    from selectllm_local.config import EvaluateConfig

    config = config or EvaluateConfig()
    base_model = _checked_model(base_model, adapter)
    engine_cfg = engine_options(config, adapter=adapter)
    log.info("generating %d answers with %s", len(examples), engine_cfg.backend)
    from selectllm_local.progress import status

    with status(f"evaluation: starting the {engine_cfg.backend} engine", enabled=progress):
        engine = load_backend(engine_cfg.backend, str(base_model), engine_cfg)
    try:
        tok = engine.tokenizer  # an HF tokenizer (the scripted fake has none)
        cut = (  # cut in the input first, as training does; the engine then only adds its BOS
            fit_prompts(examples, tok, config.max_prompt_tokens)
            if tok is not None
            else [e.prompt for e in examples]
        )
        prompts = [engine.fit_prompt(p, config.max_prompt_tokens) for p in cut]
        gens = engine.generate(
            prompts, max_tokens=config.max_new_tokens, seed=config.engine.seed, progress=progress
        )
    finally:
        engine.close()
    return [g.text.strip() for g in gens]


def reference_nll(
    examples: list[TestExample],
    *,
    base_model: str | Path,
    adapter: str | Path | None = None,
    config: EvaluateConfig | None = None,
    progress: bool = True,
) -> list[RowNLL]:
    """Mean per-token NLL of each example's reference under base model (+ adapter), in order.

    Always on the transformers backend (one forward pass per row, teacher forcing; the adapter is
    merged into the weights as for generation), on the prompt the answers are generated from.
    """
    from selectllm_local.backends import load_backend
    from selectllm_local.config import EvaluateConfig
    from selectllm_local.evaluation.refnll import reference_nll as score_rows
    from selectllm_local.progress import progress_bar

    config = config or EvaluateConfig()
    base_model = _checked_model(base_model, adapter)
    engine_cfg = dataclasses.replace(
        engine_options(config, adapter=adapter),
        backend="transformers",
        max_model_len=config.max_prompt_tokens + config.nll_max_tokens,
    )
    log.info("scoring the reference NLL of %d test rows", len(examples))
    engine: Any = load_backend("transformers", str(base_model), engine_cfg)
    try:
        prompts = fit_prompts(examples, engine.tokenizer, config.max_prompt_tokens)
        with progress_bar("reference NLL", total=len(examples), enabled=progress) as advance:
            return score_rows(
                engine.model,
                engine.tokenizer,
                prompts,
                [e.reference for e in examples],
                batch_size=config.engine.batch_size or 16,
                max_tokens=config.nll_max_tokens,
                on_batch=advance,
            )
    finally:
        engine.close()


def fit_prompts(examples: list[TestExample], tok: Any, max_prompt_tokens: int) -> list[str]:
    """Prompts of at most ``max_prompt_tokens`` tokens, long ones cut in the *input*, as in training.

    Cutting a long prompt from the left would drop the instruction (the task itself) and keep
    the tail of a long context; ``trainset.fit_to_length`` instead keeps the instruction and the
    start of the input, so the model is evaluated on the same kind of prompt it was trained on.
    Only when the instruction alone is too long is the instruction's end cut as well; the
    ``### Response:`` cue always survives.
    """

    def count(text: str) -> int:
        return len(tok(text)["input_ids"])  # as encoded for generation (BOS included)

    out = []
    for e in examples:
        prompt = e.prompt
        if count(prompt) <= max_prompt_tokens:
            out.append(prompt)
            continue
        field, other = ("input", e.instruction) if e.input else ("instruction", "")
        bare = count(render_prompt(other, "x") if field == "input" else render_prompt("x", ""))
        keep = max(1, max_prompt_tokens - bare)
        ids = tok(getattr(e, field), add_special_tokens=False)["input_ids"]
        while True:
            text = tok.decode(ids[:keep], skip_special_tokens=True)
            prompt = render_prompt(other, text) if field == "input" else render_prompt(text, "")
            if count(prompt) <= max_prompt_tokens or keep <= 1:
                break
            keep -= max(1, count(prompt) - max_prompt_tokens)
        if field == "input" and count(prompt) > max_prompt_tokens:  # instruction alone too long
            prompt = fit_prompts(
                [TestExample(e.instruction, "", e.reference)], tok, max_prompt_tokens
            )[0]
        out.append(prompt)
    return out


# -- scoring -----------------------------------------------------------------------------------


def _embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalised embeddings with the packaged all-MiniLM-L6-v2 (no download)."""
    from selectllm_local.embed.encoder import embed_texts

    return np.asarray(embed_texts(texts, batch_size=batch_size, progress=False), dtype=np.float32)


def score(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """Rouge-L F1 and embedding cosine of each prediction against its reference, and their means."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rouge = [
        scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)
    ]
    emb = _embed(list(predictions) + list(references))
    n = len(predictions)
    cosine = np.einsum("ij,ij->i", emb[:n], emb[n:]).astype(float)
    empty = np.array([not p.strip() for p in predictions])
    cosine[empty] = 0.0  # an empty answer shares nothing with the reference
    return {
        "n": n,
        "rougeL_f1": float(np.mean(rouge)) if n else 0.0,
        "cosine": float(np.mean(cosine)) if n else 0.0,
        "empty_predictions": int(empty.sum()),
        "per_example": {"rougeL_f1": [float(x) for x in rouge], "cosine": cosine.tolist()},
    }


# -- the evaluation folder ----------------------------------------------------------------------

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
