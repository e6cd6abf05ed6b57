"""Test sets: the held-out examples an evaluation answers, and the prompts they are asked with.

A test set is a JSONL/JSON list of records (``instruction``/``input``/``output``, or Dolly's
``context``/``response``; any other pool file format is read as a pool), or the paper's pair of
files ``prompt_format.json`` + ``test_gts.json`` (a folder holding both, or either file). Every
example must have a reference answer.

Prompts are the raw Alpaca-style text (no chat template), as in training; one longer than
``max_prompt_tokens`` is cut in its *input*, as training cuts it (:func:`fit_prompts`), so the
instruction and the "### Response:" cue survive.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectllm_local.errors import UserError
from selectllm_local.training.trainset import as_example, render_prompt

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


# -- prompts ---------------------------------------------------------------------------------


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
