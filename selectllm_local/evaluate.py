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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from selectllm_local.errors import UserError
from selectllm_local.trainset import as_example, render_prompt

if TYPE_CHECKING:
    from selectllm_local.config import EngineConfig, EvaluateConfig

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
        from selectllm_local import data

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


def resolve_backend(name: str, *, adapter: str | Path | None = None) -> str:
    """The backends' ``auto`` policy for this evaluation (an adapter counts)."""
    from selectllm_local.backends import resolve_backend_name

    return resolve_backend_name(name, lora=adapter is not None)


def engine_options(config: EvaluateConfig, *, adapter: str | Path | None) -> EngineConfig:
    """The engine section an evaluation runs with (what ``load_backend`` takes)."""
    from selectllm_local import hardware
    from selectllm_local.config import EngineConfig

    extra: dict[str, Any] = {}
    if adapter is not None:
        rank = int(json.loads((Path(adapter) / "adapter_config.json").read_text("utf-8"))["r"])
        extra["max_lora_rank"] = max(8, rank)
    return EngineConfig(
        backend=resolve_backend(config.backend, adapter=adapter),
        dtype=hardware.resolve_dtype("auto", cpu_auto="float32"),
        max_model_len=config.max_prompt_tokens + config.max_new_tokens,
        seed=config.seed,
        batch_size=config.batch_size,
        lora_path=str(adapter) if adapter is not None else None,
        extra=extra,
    )


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
    from selectllm_local.models import resolve_model_path

    config = config or EvaluateConfig()
    base_model = resolve_model_path(base_model, flag="--base-model")  # .gguf / known name
    if not Path(base_model).exists():
        raise UserError(f"Base model {base_model} does not exist: give a local model directory.")
    if adapter is not None and not (Path(adapter) / "adapter_config.json").exists():
        raise UserError(
            f"Adapter {adapter} has no adapter_config.json: give a fine-tuned adapter folder."
        )
    engine_cfg = engine_options(config, adapter=adapter)
    log.info("generating %d answers with %s", len(examples), engine_cfg.backend)
    from selectllm_local.progress import status

    with status(f"evaluation: starting the {engine_cfg.backend} engine", enabled=progress):
        engine = load_backend(engine_cfg.backend, str(base_model), engine_cfg)
    try:
        tok = getattr(engine, "tokenizer", None)  # an HF tokenizer (the scripted fake has none)
        cut = (  # cut in the input first, as training does; the engine then only adds its BOS
            fit_prompts(examples, tok, config.max_prompt_tokens)
            if tok is not None
            else [e.prompt for e in examples]
        )
        prompts = [engine.fit_prompt(p, config.max_prompt_tokens) for p in cut]
        gens = engine.generate(
            prompts, max_tokens=config.max_new_tokens, seed=config.seed, progress=progress
        )
    finally:
        engine.close()
    return [g.text.strip() for g in gens]


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
    from selectllm_local.embedding import embed_texts

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


@dataclass
class EvalOutcome:
    out_dir: Path
    n: int
    rougeL_f1: float
    cosine: float
    backend: str
    seconds: float

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d


def evaluate_run(
    test_set: Path | str,
    *,
    base_model: str | Path,
    adapter: str | Path | None,
    out_dir: Path,
    config: EvaluateConfig | None = None,
    progress: bool = True,
) -> EvalOutcome:
    """Generate, score and write ``predictions.jsonl`` (per example) and ``scores.json``."""
    from selectllm_local.config import EvaluateConfig
    from selectllm_local.runstore import write_json, write_jsonl

    config = config or EvaluateConfig()
    examples = load_testset(test_set, limit=config.limit)
    t0 = time.perf_counter()
    chosen = resolve_backend(config.backend, adapter=adapter)
    preds = generate_answers(
        examples,
        base_model=base_model,
        adapter=adapter,
        config=dataclasses.replace(config, backend=chosen),
        progress=progress,
    )
    scores = score(preds, [e.reference for e in examples])
    seconds = time.perf_counter() - t0
    out = Path(out_dir)
    per = scores.pop("per_example")
    write_jsonl(
        out / "predictions.jsonl",
        (
            {
                "instruction": e.instruction,
                "input": e.input,
                "reference": e.reference,
                "prediction": p,
                "rougeL_f1": r,
                "cosine": c,
            }
            for e, p, r, c in zip(examples, preds, per["rougeL_f1"], per["cosine"], strict=True)
        ),
    )
    outcome = EvalOutcome(out, scores["n"], scores["rougeL_f1"], scores["cosine"], chosen, seconds)
    write_json(
        out / "scores.json",
        {
            **scores,
            "backend": chosen,
            "base_model": str(base_model),
            "adapter": str(adapter) if adapter else None,
            "test_set": str(test_set),
            "max_new_tokens": config.max_new_tokens,
            "seconds": round(seconds, 3),
        },
    )
    log.info(
        "Rouge-L F1 %.4f, cosine %.4f on %d examples", outcome.rougeL_f1, outcome.cosine, outcome.n
    )
    return outcome
