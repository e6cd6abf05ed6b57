"""The training set of a fine-tuning run: records in, Alpaca-style prompt/completion pairs out.

Why apart from ``finetune``: the prompt format is shared by training and evaluation (a model is
scored on the prompt it was trained on), and reading records and checking that each has a
response must happen before any model is loaded. Nothing here imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from selectllm_local.errors import UserError
from selectllm_local.records import PoolItem


def render_prompt(instruction: str, input_text: str = "") -> str:
    """The Alpaca-style prompt used for training and evaluation (input part only when present)."""
    if input_text and input_text.strip():
        return f"### Instruction:\n{instruction.strip()}\n\n### Input:\n{input_text.strip()}\n\n### Response:\n"
    return f"### Instruction:\n{instruction.strip()}\n\n### Response:\n"


def as_example(record: PoolItem | Mapping[str, Any]) -> dict[str, str | None]:
    """instruction / input / output of a pool item or a plain record (Alpaca or Dolly names)."""
    if isinstance(record, PoolItem):
        return {"instruction": record.instruction, "input": record.input, "output": record.output}
    block = record.get("selectllm")
    if isinstance(block, dict) and "instruction" in block:  # a row of selected.jsonl
        record = block
    get = record.get
    return {
        "instruction": str(get("instruction") or ""),
        "input": str(get("input") or get("context") or ""),
        "output": get("output") if get("output") is not None else get("response"),
    }


def load_records(path: Path) -> list[dict[str, Any]]:
    """Records to fine-tune on: ``selected.jsonl`` rows or any JSONL / JSON list of records."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p} does not exist: give the selected.jsonl of a select/baseline run.")
    if p.suffix == ".json":
        rows = json.loads(p.read_text("utf-8"))
        if not isinstance(rows, list):
            raise UserError(f"{p} must hold a JSON list of records.")
        return rows
    rows = []
    with open(p, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UserError(f"{p}, line {n}: not valid JSON ({exc.msg}).") from exc
    return rows


def training_examples(records: Sequence[PoolItem | Mapping[str, Any]]) -> list[dict[str, str]]:
    """instruction/input/output of each record; every record must have a response (checked
    before any heavy work)."""
    if not records:
        raise UserError("Nothing to fine-tune on: the selection is empty.")
    examples = [as_example(r) for r in records]
    missing = [i for i, e in enumerate(examples) if not (e["output"] and str(e["output"]).strip())]
    if missing:
        first = str(examples[missing[0]]["instruction"] or "")[:60]
        raise UserError(
            f"{len(missing)} of {len(examples)} records to fine-tune on have no response (first: "
            f"record {missing[0] + 1}, '{first}'). Fine-tuning needs the response of every selected "
            "instruction: annotate the selection first, or name the response column with "
            "--output-field."
        )
    return [
        {
            "instruction": e["instruction"] or "",
            "input": e["input"] or "",
            "output": str(e["output"]),
        }
        for e in examples
    ]


MIN_RESPONSE_TOKENS = 16  # tokens of the response that must survive when a long input is cut


def fit_to_length(
    examples: list[dict[str, str]], tok: Any, max_length: int
) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Prompt/completion pairs that leave room for the response within ``max_length`` tokens.

    TRL cuts sequences at the end, so a long input would push the whole response out and the
    example would be dropped as "fully masked". Instead the *input* is cut (its end dropped) until
    the prompt leaves at least a quarter of ``max_length`` (or ``MIN_RESPONSE_TOKENS``) for the
    response; an example whose instruction alone is too long is dropped and counted.
    """
    room = max(MIN_RESPONSE_TOKENS, max_length // 4)
    limit = max_length - room
    out, cut, dropped = [], 0, 0
    for e in examples:
        prompt = render_prompt(e["instruction"], e["input"])
        n = len(tok(prompt, add_special_tokens=False)["input_ids"])
        if n > limit:
            bare = len(
                tok(render_prompt(e["instruction"], "x"), add_special_tokens=False)["input_ids"]
            )
            keep = limit - bare
            if keep < 1:
                dropped += 1
                continue
            ids = tok(e["input"], add_special_tokens=False)["input_ids"][:keep]
            prompt = render_prompt(e["instruction"], tok.decode(ids))
            cut += 1
        out.append({"prompt": prompt, "completion": e["output"]})
    return out, {"inputs_cut": cut, "dropped_too_long": dropped}


def split_validation(
    pairs: list[dict[str, str]], fraction: float, seed: int
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, validation): a seeded ``fraction`` of the pairs held out (at least one when > 0)."""
    if not fraction:
        return pairs, []
    if len(pairs) < 2:
        raise UserError(
            f"val_fraction {fraction} needs at least 2 records to fine-tune on (got {len(pairs)})."
        )
    import random

    n_val = min(len(pairs) - 1, max(1, round(len(pairs) * fraction)))
    held = set(random.Random(f"val:{seed}").sample(range(len(pairs)), n_val))
    train = [p for i, p in enumerate(pairs) if i not in held]
    return train, [p for i, p in enumerate(pairs) if i in held]
