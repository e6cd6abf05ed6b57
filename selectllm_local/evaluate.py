"""Score a fine-tuned model on a held-out test set: Rouge-L F1 and embedding cosine similarity.

The paper's two metrics, computed offline: greedy answers from base model + LoRA adapter for every
test prompt (the same Alpaca-style prompt the model was trained on), then against the reference
answer the Rouge-L F1 of ``rouge-score`` (its default tokeniser, no stemming) and the cosine
similarity of all-MiniLM-L6-v2 sentence embeddings (the packaged copy, no hub).

Two generation backends, chosen explicitly (``--backend``): ``transformers`` + peft works
everywhere (batched greedy decoding, left padding, prompts grouped by length); ``vllm`` serves the
adapter with ``enable_lora`` / ``LoRARequest`` and is the fast path on a GPU. ``auto`` takes vLLM
when it is installed and a CUDA GPU is visible, else transformers, and logs which.

Test sets: a JSONL/JSON list of records (``instruction``/``input``/``output``, or Dolly's
``context``/``response``), or the paper's pair of files ``prompt_format.json`` + ``test_gts.json``
(a folder holding both, or either file).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selectllm_local.errors import UserError
from selectllm_local.finetune import as_example, render_prompt

log = logging.getLogger(__name__)

EVAL_BACKENDS = ("auto", "transformers", "vllm")
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


def resolve_backend(name: str) -> str:
    import importlib.util

    if name not in EVAL_BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(EVAL_BACKENDS)} (got '{name}').")
    if name != "auto":
        return name
    import torch

    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        return "vllm"
    return "transformers"


def generate_answers(
    examples: list[TestExample],
    *,
    base_model: str | Path,
    adapter: str | Path | None = None,
    backend: str = "auto",
    max_new_tokens: int = 256,
    batch_size: int = 16,
    max_prompt_tokens: int = 1024,
    seed: int = 0,
    progress: bool = True,
) -> list[str]:
    """Greedy answers of base model (+ adapter) for every example, in order."""
    from selectllm_local.models import resolve_model_path

    base_model = resolve_model_path(base_model, flag="--base-model")  # .gguf / known name
    if not Path(base_model).exists():
        raise UserError(f"Base model {base_model} does not exist: give a local model directory.")
    if adapter is not None and not (Path(adapter) / "adapter_config.json").exists():
        raise UserError(
            f"Adapter {adapter} has no adapter_config.json: give a fine-tuned adapter folder."
        )
    chosen = resolve_backend(backend)
    log.info("generating %d answers with %s", len(examples), chosen)
    if chosen == "vllm":
        return _generate_vllm(
            examples, str(base_model), adapter, max_new_tokens, max_prompt_tokens, seed
        )
    return _generate_hf(
        examples, str(base_model), adapter, max_new_tokens, batch_size, max_prompt_tokens, progress
    )


def fit_prompts(examples: list[TestExample], tok: Any, max_prompt_tokens: int) -> list[str]:
    """Prompts of at most ``max_prompt_tokens`` tokens, long ones cut in the *input*, as in training.

    Cutting a long prompt from the left would drop the instruction (the task itself) and keep
    the tail of a long context; ``finetune.fit_to_length`` instead keeps the instruction and the
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


def _generate_hf(
    examples: list[TestExample],
    base_model: str,
    adapter: str | Path | None,
    max_new_tokens: int,
    batch_size: int,
    max_prompt_tokens: int,
    progress: bool,
) -> list[str]:
    import torch
    from rich.progress import track
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = torch.cuda.is_available()
    tok = AutoTokenizer.from_pretrained(str(adapter) if adapter else base_model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    prompts = fit_prompts(examples, tok, max_prompt_tokens)
    dtype = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model = model.to("cuda" if cuda else "cpu").eval()
    enc = [tok(p)["input_ids"] for p in prompts]
    order = np.argsort([len(e) for e in enc], kind="stable")  # similar lengths share a batch
    out = [""] * len(prompts)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    with torch.inference_mode():
        for batch in track(batches, description="evaluate", disable=not progress):
            padded = tok.pad({"input_ids": [enc[i] for i in batch]}, return_tensors="pt")
            padded = {k: v.to(model.device) for k, v in padded.items()}
            gen = model.generate(
                **padded,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
            width = padded["input_ids"].shape[1]
            for j, i in enumerate(batch):
                out[i] = tok.decode(gen[j, width:], skip_special_tokens=True).strip()
    del model
    return out


def _generate_vllm(
    examples: list[TestExample],
    base_model: str,
    adapter: str | Path | None,
    max_new_tokens: int,
    max_prompt_tokens: int,
    seed: int,
) -> list[str]:
    from selectllm_local.errors import require

    vllm = require("vllm", feature="Evaluation with --backend vllm", extra="gpu")
    from vllm.lora.request import LoRARequest

    from selectllm_local.backends import resolve_dtype

    kwargs: dict[str, Any] = {
        "model": base_model,
        "dtype": resolve_dtype("auto"),  # float32 on a CPU without native bf16
        "seed": seed,
        "max_model_len": max_prompt_tokens + max_new_tokens,
    }
    request = None
    if adapter is not None:
        rank = int(json.loads((Path(adapter) / "adapter_config.json").read_text("utf-8"))["r"])
        kwargs.update(enable_lora=True, max_lora_rank=max(8, rank), max_loras=1)
        request = LoRARequest("selected", 1, str(adapter))
    llm = vllm.LLM(**kwargs)
    try:
        cut = fit_prompts(examples, llm.get_tokenizer(), max_prompt_tokens)
        params = vllm.SamplingParams(temperature=0.0, max_tokens=max_new_tokens, seed=seed)
        results = llm.generate(cut, params, lora_request=request, use_tqdm=True)
        return [r.outputs[0].text.strip() for r in results]
    finally:
        del llm


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
    backend: str = "auto",
    limit: int | None = None,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    max_prompt_tokens: int = 1024,
    seed: int = 0,
    progress: bool = True,
) -> EvalOutcome:
    """Generate, score and write ``predictions.jsonl`` (per example) and ``scores.json``."""
    from selectllm_local.runstore import write_json, write_jsonl

    examples = load_testset(test_set, limit=limit)
    t0 = time.perf_counter()
    chosen = resolve_backend(backend)
    preds = generate_answers(
        examples,
        base_model=base_model,
        adapter=adapter,
        backend=chosen,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_prompt_tokens=max_prompt_tokens,
        seed=seed,
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
            "max_new_tokens": max_new_tokens,
            "seconds": round(seconds, 3),
        },
    )
    log.info(
        "Rouge-L F1 %.4f, cosine %.4f on %d examples", outcome.rougeL_f1, outcome.cosine, outcome.n
    )
    return outcome
