"""Reading a user's instruction pool into normalized :class:`~selectllm_local.records.PoolItem` s.

Pools come in many shapes, so this module does two things carefully: it recognises the common
schemas without flags (Dolly, Alpaca, ShareGPT conversations) and it fails with a message a user can
act on (file, line or row, field, and the flag that fixes it) instead of a traceback deep in a JSON
parser. Everything after this stage refers to items by ``PoolItem.index`` (0..N-1 after dropping
duplicates and empty instructions), so the ids are stable for a given file.

Responses are carried along (``output``) for fine-tuning later but are never shown to the selector.
This module only reads user files (file formats: ``poolfiles``); the normalized pool is written
by the pipeline's run store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectllm_local.data.files import BadRow, open_rows
from selectllm_local.errors import UserError
from selectllm_local.records import PoolItem, PoolStats, text_hash

log = logging.getLogger(__name__)

SCHEMAS: dict[str, dict[str, str | None]] = {
    "dolly": {
        "instruction": "instruction",
        "input": "context",
        "output": "response",
        "category": "category",
    },
    "alpaca": {
        "instruction": "instruction",
        "input": "input",
        "output": "output",
        "category": None,
    },
}
CHAT_KEYS = ("conversations", "messages")
DETECT_ROWS = 100  # rows without any known field before giving up on auto-detection
USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant", "bot", "model", "chatgpt"}


@dataclass(frozen=True)
class FieldMap:
    """Source field names (``--instruction-field`` etc.); ``None`` leaves a field to auto-detection."""

    instruction: str | None = None
    input: str | None = None
    output: str | None = None
    category: str | None = None

    def given(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v}


def embedding_text(item: PoolItem) -> str:
    """The text that gets embedded, in the paper's format (the input part only when present)."""
    if item.input:
        return f"### Instruction: {item.instruction}\n\n### Input: {item.input}\n\n### Response:"
    return f"### Instruction: {item.instruction}\n\n### Response:"


# (instruction, input, output) -> why the row must go, or None to keep it
Exclude = Callable[[str, str, str | None], str | None]


def load_pool(
    path: str | Path,
    *,
    fields: FieldMap | None = None,
    skip_bad_rows: bool = False,
    exclude: Exclude | None = None,
) -> tuple[list[PoolItem], PoolStats]:
    """Read a pool file or ``datasets`` folder; drop duplicates and empty instructions, counted.

    ``exclude`` (e.g. ``splits.TestOverlap``) sees every row before de-duplication, so a row it
    rejects never hides a duplicate of itself; it keeps its own counts. Raises
    :class:`UserError` for anything the user can fix; with ``skip_bad_rows`` malformed rows are
    recorded in ``PoolStats.bad_rows`` and skipped instead.
    """
    path = Path(path).expanduser()
    rows = open_rows(path)
    bad = _BadRows(path, rows.unit, skip_bad_rows)
    schema = _SchemaDetector(path, fields or FieldMap())
    pool = _PoolBuilder(exclude)
    n_read = 0
    for row, rec in rows.it:
        n_read += 1
        if isinstance(rec, BadRow):
            bad.reject(row, rec.error)
            continue
        if not isinstance(rec, dict):
            bad.reject(row, f"expected an object with named fields, found {type(rec).__name__}")
            continue
        for ready_row, ready in schema.feed(row, rec):
            assert schema.mapping is not None
            try:
                parts = _extract(ready, schema.mapping, schema.schema)
            except _FieldError as exc:
                bad.reject(ready_row, str(exc))
                continue
            pool.add(ready_row, ready, *parts)
    mapping = _check_found(path, rows.unit, n_read, bad.rows, schema, pool)
    stats = PoolStats(
        path=str(path),
        format=rows.format,
        schema=schema.schema,
        fields=dict(mapping),
        rows_read=n_read,
        kept=len(pool.items),
        duplicates=pool.counts["duplicates"],
        empty=pool.counts["empty"],
        bad_rows=bad.rows,
    )
    log.info(
        "pool %s: %d rows (%s, %s schema), kept %d, %d excluded, %d duplicates, %d empty, "
        "%d bad rows",
        path, n_read, rows.format, schema.schema, len(pool.items), pool.counts["excluded"],
        pool.counts["duplicates"], pool.counts["empty"], len(bad.rows),
    )  # fmt: skip
    return pool.items, stats


class _BadRows:
    """Malformed rows: an error naming the row, or (``skip_bad_rows``) a list of them."""

    def __init__(self, path: Path, unit: str, skip: bool) -> None:
        self.path, self.unit, self.skip = path, unit, skip
        self.rows: list[dict[str, Any]] = []

    def reject(self, row: int, error: str) -> None:
        if not self.skip:
            raise UserError(
                f"{self.path}, {self.unit} {row}: {error}. Fix that {self.unit}, or pass "
                f"--skip-bad-rows to skip malformed rows and list them in the plan summary."
            )
        self.rows.append({"row": row, "error": error})


class _SchemaDetector:
    """Recognises the schema from the first record that has a known field; holds the records
    before it and releases them, in order, once the schema is known."""

    def __init__(self, path: Path, fields: FieldMap) -> None:
        self.path, self.fields = path, fields
        self.schema = "custom"
        self.mapping: dict[str, str | None] | None = None
        self.keys_seen: set[str] = set()
        self.pending: list[tuple[int, dict[str, Any]]] = []  # read before the schema was known

    def feed(self, row: int, rec: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
        """The records ready to normalise: none while the schema is unknown, then the held
        ones and this one; gives up (:func:`_no_fields`) after ``DETECT_ROWS`` unknown rows."""
        if self.mapping is not None:
            return [(row, rec)]
        self.keys_seen |= set(rec)
        detected = _detect(rec, self.fields)
        if detected is None:
            self.pending.append((row, rec))
            if len(self.pending) >= DETECT_ROWS:
                _no_fields(self.path, self.keys_seen, self.fields)
            return []
        self.schema, self.mapping = detected
        ready, self.pending = [*self.pending, (row, rec)], []
        return ready


class _PoolBuilder:
    """Normalised records into :class:`PoolItem` s, numbered 0..N-1; empty instructions, excluded
    rows and duplicates (same instruction and input, whitespace aside) are dropped and counted."""

    def __init__(self, exclude: Exclude | None) -> None:
        self.exclude = exclude
        self.items: list[PoolItem] = []
        self.seen: set[str] = set()
        self.counts = {"duplicates": 0, "empty": 0, "excluded": 0}

    def add(
        self,
        row: int,
        rec: dict[str, Any],
        instruction: str,
        inp: str,
        output: str | None,
        category: str | None,
    ) -> None:
        if not instruction:
            self.counts["empty"] += 1
            return
        if self.exclude is not None and self.exclude(instruction, inp, output) is not None:
            self.counts["excluded"] += 1
            return
        uid = text_hash(" ".join(instruction.split()) + "\n\n" + " ".join(inp.split()))
        if uid in self.seen:
            self.counts["duplicates"] += 1
            return
        self.seen.add(uid)
        self.items.append(
            PoolItem(
                index=len(self.items),
                uid=uid,
                source_row=row,
                instruction=instruction,
                input=inp,
                output=output,
                category=category,
                raw=rec,
            )
        )


def _check_found(
    path: Path,
    unit: str,
    n_read: int,
    bad: list[dict[str, Any]],
    schema: _SchemaDetector,
    pool: _PoolBuilder,
) -> dict[str, str | None]:
    """The field mapping, once the whole file is read; a clear error if no pool came of it."""
    if schema.mapping is None:
        if n_read == len(bad) and n_read:
            raise UserError(
                f"{path}: every one of its {n_read} {unit}s was malformed "
                f"(first: {unit} {bad[0]['row']}: {bad[0]['error']}). Check the file format."
            )
        if n_read == 0:
            raise UserError(f"{path} holds no rows. Point selectllm at a file with instructions.")
        _no_fields(path, schema.keys_seen, schema.fields)
    assert schema.mapping is not None
    excluded = pool.counts["excluded"]
    if not pool.items and excluded:
        raise UserError(
            f"{path}: all {excluded} rows with an instruction are test examples (or "
            "share a test example's prompt), so no pool is left. Point the pool and the test set "
            "at different data."
        )
    if not pool.items:
        raise UserError(
            f"{path}: none of its {n_read} {unit}s has a non-empty instruction in field "
            f"'{schema.mapping['instruction']}'. Choose the field that holds the instructions with "
            "--instruction-field."
        )
    return schema.mapping


def _no_fields(path: Path, keys: set[str], fields: FieldMap) -> None:
    found = ", ".join(sorted(map(str, keys))[:30]) or "(none)"
    if fields.instruction:
        raise UserError(
            f"{path}: no row has the field '{fields.instruction}' given by --instruction-field. "
            f"Fields found: {found}."
        )
    raise UserError(
        f"{path}: none of the known pool fields were found (Dolly: instruction/context/response, "
        f"Alpaca: instruction/input/output, ShareGPT: conversations). Fields found: {found}. "
        "Name yours with --instruction-field (and --input-field, --output-field)."
    )


def _detect(rec: dict[str, Any], fields: FieldMap) -> tuple[str, dict[str, str | None]] | None:
    """Schema name and field mapping from one record, or None if it has no known field."""
    given = fields.given()
    if not fields.instruction:
        for key in CHAT_KEYS:
            if isinstance(rec.get(key), list):
                return "sharegpt", {
                    "instruction": key,
                    "input": None,
                    "output": key,
                    "category": None,
                }
    base: dict[str, str | None]
    if "instruction" in rec and ("context" in rec or "response" in rec):
        schema, base = "dolly", dict(SCHEMAS["dolly"])
    elif "instruction" in rec:
        schema, base = "alpaca", dict(SCHEMAS["alpaca"])
    elif fields.instruction and fields.instruction in rec:
        schema, base = (
            "custom",
            {"instruction": None, "input": None, "output": None, "category": None},
        )
    else:
        return None
    if given:
        base.update(given)
        if fields.instruction and fields.instruction != "instruction":
            schema = "custom"
    return schema, base


def _text(rec: dict[str, Any], field: str | None, what: str) -> str:
    if not field:
        return ""
    val = rec.get(field)
    if val is None:
        return ""
    if isinstance(val, str):
        return val.strip()
    if isinstance(val, (int, float, bool)):
        return str(val)
    raise _FieldError(f"field '{field}' ({what}) is a {type(val).__name__}, expected text")


class _FieldError(ValueError):
    pass


def _chat(turns: list[Any], field: str) -> tuple[str, str | None]:
    """First user turn and the first assistant turn after it (from/value or role/content)."""
    instruction, output = "", None
    for turn in turns:
        if not isinstance(turn, dict):
            raise _FieldError(
                f"field '{field}' holds a {type(turn).__name__} turn, expected objects"
            )
        role = str(turn.get("from", turn.get("role", ""))).lower()
        text = turn.get("value", turn.get("content"))
        text = text.strip() if isinstance(text, str) else ""
        if not instruction and role in USER_ROLES:
            instruction = text
            if not text:
                break
        elif instruction and role in ASSISTANT_ROLES:
            output = text
            break
    return instruction, output


def _extract(
    rec: dict[str, Any], mapping: dict[str, str | None], schema: str
) -> tuple[str, str, str | None, str | None]:
    """(instruction, input, output, category) of one record; raises _FieldError if malformed."""
    if schema == "sharegpt":
        key = mapping["instruction"] or "conversations"
        turns = rec.get(key)
        if not isinstance(turns, list):
            raise _FieldError(f"field '{key}' is missing or not a list of turns")
        instruction, output = _chat(turns, key)
        return instruction, "", output, None
    instruction = _text(rec, mapping["instruction"], "instruction")
    inp = _text(rec, mapping["input"], "input")
    out_field = mapping["output"]
    output = (
        _text(rec, out_field, "output") if out_field and rec.get(out_field) is not None else None
    )
    category = _text(rec, mapping["category"], "category") or None
    return instruction, inp, output, category
