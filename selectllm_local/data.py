"""Reading a user's instruction pool into normalized :class:`~selectllm_local.records.PoolItem` s.

Pools come in many shapes, so this module does two things carefully: it recognises the common
schemas without flags (Dolly, Alpaca, ShareGPT conversations) and it fails with a message a user can
act on (file, line or row, field, and the flag that fixes it) instead of a traceback deep in a JSON
parser. Everything after this stage refers to items by ``PoolItem.index`` (0..N-1 after dropping
duplicates and empty instructions), so the ids are stable for a given file.

Responses are carried along (``output``) for fine-tuning later but are never shown to the selector.
This module only reads user files; the normalized pool is written by the pipeline's run store.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .records import PoolItem, PoolStats, text_hash

log = logging.getLogger(__name__)

SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
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


class _Rows:
    """Rows of one file: ``(row_number, record_or_error)``; ``unit`` is 'line' or 'row'."""

    def __init__(self, path: Path, fmt: str, unit: str, it: Iterator[tuple[int, Any]]) -> None:
        self.path, self.format, self.unit, self.it = path, fmt, unit, it


def embedding_text(item: PoolItem) -> str:
    """The text that gets embedded, in the paper's format (the input part only when present)."""
    if item.input:
        return f"### Instruction: {item.instruction}\n\n### Input: {item.input}\n\n### Response:"
    return f"### Instruction: {item.instruction}\n\n### Response:"


def load_pool(
    path: str | Path, *, fields: FieldMap | None = None, skip_bad_rows: bool = False
) -> tuple[list[PoolItem], PoolStats]:
    """Read a pool file or ``datasets`` folder; drop duplicates and empty instructions, counted.

    Raises :class:`UserError` for anything the user can fix; with ``skip_bad_rows`` malformed rows
    are recorded in ``PoolStats.bad_rows`` and skipped instead.
    """
    path = Path(path).expanduser()
    rows = _open_rows(path)
    fields = fields or FieldMap()
    items: list[PoolItem] = []
    seen: set[str] = set()
    bad: list[dict[str, Any]] = []
    counts = {"read": 0, "duplicates": 0, "empty": 0}
    mapping: dict[str, str | None] | None = None
    schema = "custom"
    keys_seen: set[str] = set()
    pending: list[tuple[int, dict[str, Any]]] = []  # rows read before the schema was recognised

    def reject(row: int, error: str) -> None:
        if not skip_bad_rows:
            raise UserError(
                f"{path}, {rows.unit} {row}: {error}. Fix that {rows.unit}, or pass "
                f"--skip-bad-rows to skip malformed rows and list them in the plan summary."
            )
        bad.append({"row": row, "error": error})

    def add(row: int, rec: dict[str, Any]) -> None:
        assert mapping is not None
        try:
            instruction, inp, output, category = _extract(rec, mapping, schema)
        except _FieldError as exc:
            reject(row, str(exc))
            return
        if not instruction:
            counts["empty"] += 1
            return
        uid = text_hash(" ".join(instruction.split()) + "\n\n" + " ".join(inp.split()))
        if uid in seen:
            counts["duplicates"] += 1
            return
        seen.add(uid)
        items.append(
            PoolItem(
                index=len(items),
                uid=uid,
                source_row=row,
                instruction=instruction,
                input=inp,
                output=output,
                category=category,
                raw=rec,
            )
        )

    for row, rec in rows.it:
        counts["read"] += 1
        if isinstance(rec, _BadRow):
            reject(row, rec.error)
            continue
        if not isinstance(rec, dict):
            reject(row, f"expected an object with named fields, found {type(rec).__name__}")
            continue
        if mapping is None:
            keys_seen |= set(rec)
            detected = _detect(rec, fields)
            if detected is None:
                pending.append((row, rec))
                if len(pending) >= DETECT_ROWS:
                    _no_fields(path, keys_seen, fields)
                continue
            schema, mapping = detected
            for prow, prec in pending:
                add(prow, prec)
            pending.clear()
        add(row, rec)

    n_read = counts["read"]
    if mapping is None:
        if n_read == len(bad) and n_read:
            raise UserError(
                f"{path}: every one of its {n_read} {rows.unit}s was malformed "
                f"(first: {rows.unit} {bad[0]['row']}: {bad[0]['error']}). Check the file format."
            )
        if n_read == 0:
            raise UserError(f"{path} holds no rows. Point selectllm at a file with instructions.")
        _no_fields(path, keys_seen, fields)
    assert mapping is not None
    if not items:
        raise UserError(
            f"{path}: none of its {n_read} {rows.unit}s has a non-empty instruction in field "
            f"'{mapping['instruction']}'. Choose the field that holds the instructions with "
            "--instruction-field."
        )
    stats = PoolStats(
        path=str(path),
        format=rows.format,
        schema=schema,
        fields=dict(mapping),
        rows_read=n_read,
        kept=len(items),
        duplicates=counts["duplicates"],
        empty=counts["empty"],
        bad_rows=bad,
    )
    log.info(
        "pool %s: %d rows (%s, %s schema), kept %d, %d duplicates, %d empty, %d bad rows",
        path, n_read, rows.format, schema, len(items), counts["duplicates"], counts["empty"], len(bad),
    )  # fmt: skip
    return items, stats


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


# -- formats --------------------------------------------------------------------------------


class _BadRow:
    def __init__(self, error: str) -> None:
        self.error = error


def _open_rows(path: Path) -> _Rows:
    if not path.exists():
        raise UserError(
            f"Pool file not found: {path} (working directory {Path.cwd()}). Check the path."
        )
    if path.is_dir():
        return _datasets_rows(path)
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise UserError(
            f"{path}: unknown file type '{path.suffix or '(no extension)'}'. Supported: "
            ".jsonl, .json (a list of objects), .csv, .tsv, .parquet, or a folder saved with "
            "datasets' save_to_disk. Rename the file to its format's extension."
        )
    if fmt == "parquet":
        return _parquet_rows(path)
    text = _read_text(path)
    if not text.strip():
        raise UserError(f"{path} is empty. Point selectllm at a file with instructions.")
    if fmt == "csv":
        return _csv_rows(path, text)
    if fmt == "json" and text.lstrip()[:1] != "[":
        fmt = "jsonl"  # a .json file with one object per line
    if fmt == "json":
        return _json_list_rows(path, text)
    return _Rows(path, "jsonl", "line", _jsonl_iter(text))


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(
            f"{path}: not valid UTF-8 at byte {exc.start} (line {line}). Convert the file to "
            f"UTF-8 first, e.g. iconv -f LATIN1 -t UTF-8 '{path}' > pool.utf8{path.suffix}"
        ) from None


def _jsonl_iter(text: str) -> Iterator[tuple[int, Any]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            yield lineno, _BadRow(f"not valid JSON ({exc.msg} at column {exc.colno})")


def _json_list_rows(path: Path, text: str) -> _Rows:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path}, line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg}). A JSON "
            "pool must be one list of objects; fix the file (a broken list cannot be skipped row "
            "by row: convert it to JSONL to use --skip-bad-rows)."
        ) from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) == 1:
            data = data[lists[0]]
    if not isinstance(data, list):
        raise UserError(
            f"{path}: expected a JSON list of objects, found a {type(data).__name__}. "
            "Use a list of records or JSONL (one object per line)."
        )
    if not data:
        raise UserError(f"{path} is an empty list. Point selectllm at a file with instructions.")
    return _Rows(path, "json", "row", iter(enumerate(data)))


def _csv_rows(path: Path, text: str) -> _Rows:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(text.splitlines(keepends=True), delimiter=delim)

    def it() -> Iterator[tuple[int, Any]]:
        start = 2
        while True:
            try:
                rec = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield reader.line_num, _BadRow(f"unreadable CSV ({exc})")
                start = reader.line_num + 1
                continue
            if None in rec:
                yield (
                    start,
                    _BadRow(
                        f"has {len(rec) - 1 + len(rec[None])} fields, the header has {len(rec) - 1}"
                    ),
                )
            else:
                yield start, rec
            start = reader.line_num + 1

    if not reader.fieldnames:
        raise UserError(f"{path} has no header row. The first CSV line must name the fields.")
    return _Rows(path, "csv", "line", it())


def _parquet_rows(path: Path) -> _Rows:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad files
        raise UserError(f"{path}: not a readable Parquet file ({exc}).") from None
    if table.num_rows == 0:
        raise UserError(f"{path} holds no rows. Point selectllm at a file with instructions.")
    return _Rows(path, "parquet", "row", _batched(table.to_batches()))


def _batched(batches: Any) -> Iterator[tuple[int, Any]]:
    row = 0
    for batch in batches:
        for rec in batch.to_pylist():
            yield row, rec
            row += 1


def _datasets_rows(path: Path) -> _Rows:
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if not any((path / m).exists() for m in markers):
        raise UserError(
            f"{path} is a folder but not a Hugging Face dataset saved with save_to_disk (no "
            "dataset_info.json or state.json). Point at the file, or at the saved dataset folder."
        )
    from .errors import require

    datasets = require("datasets", feature="Reading a datasets folder")
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - surface the library's reason in one line
        raise UserError(f"{path}: could not load the saved dataset ({exc}).") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise UserError(
                f"{path} holds splits {sorted(ds)} and none is called 'train'. Point at one "
                f"split's folder, e.g. {path / sorted(ds)[0]}."
            )
        ds = ds["train"]
    if len(ds) == 0:
        raise UserError(f"{path} holds no rows. Point selectllm at a dataset with instructions.")
    return _Rows(path, "datasets", "row", _batched(ds.data.to_batches()))
