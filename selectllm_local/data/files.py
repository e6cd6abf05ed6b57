"""Pool files, row by row: JSONL, a JSON list, CSV/TSV (each optionally gzip-compressed, e.g.
``pool.jsonl.gz``), Parquet, or a saved datasets folder.

Why apart from ``data``: ``data`` decides what a record means (schemas, fields, duplicates);
this module only turns a file into numbered rows, and a row it cannot parse into a ``BadRow``
carrying the reason, so ``data`` can report "file, line N: reason" or skip it on request.
Each reader keeps the unit users count in (a line for JSONL and CSV, a row otherwise).
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selectllm_local.errors import UserError

SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


class Rows:
    """Rows of one file: ``(row_number, record_or_error)``; ``unit`` is 'line' or 'row'."""

    def __init__(self, path: Path, fmt: str, unit: str, it: Iterator[tuple[int, Any]]) -> None:
        self.path, self.format, self.unit, self.it = path, fmt, unit, it


class BadRow:
    def __init__(self, error: str) -> None:
        self.error = error


def open_rows(path: Path) -> Rows:
    if not path.exists():
        raise UserError(
            f"Pool file not found: {path} (working directory {Path.cwd()}). Check the path."
        )
    if path.is_dir():
        return _datasets_rows(path)
    suffix, gz = format_suffix(path)
    fmt = SUFFIXES.get(suffix)
    if fmt is None or (gz and fmt == "parquet"):
        raise UserError(
            f"{path}: unknown file type '{suffix + ('.gz' if gz else '') or '(no extension)'}'. "
            "Supported: .jsonl, .json (a list of objects), .csv, .tsv (each also gzip-compressed, "
            "e.g. .jsonl.gz), .parquet, or a folder saved with datasets' save_to_disk. Rename the "
            "file to its format's extension."
        )
    if fmt == "parquet":
        return _parquet_rows(path)
    text = _read_text(path, gz=gz)
    if not text.strip():
        raise UserError(f"{path} is empty. Point selectllm at a file with instructions.")
    if fmt == "csv":
        return _csv_rows(path, text, delimiter="\t" if suffix == ".tsv" else ",")
    if fmt == "json" and text.lstrip()[:1] != "[":
        fmt = "jsonl"  # a .json file with one object per line
    if fmt == "json":
        return _json_list_rows(path, text)
    return Rows(path, "jsonl", "line", _jsonl_iter(text))


def format_suffix(path: Path) -> tuple[str, bool]:
    """The format's extension (lower case) and whether a ``.gz`` follows it:
    ``pool.jsonl.gz`` -> ``(".jsonl", True)``."""
    name = Path(path.name.lower())
    if name.suffix == ".gz":
        return Path(name.stem).suffix, True
    return name.suffix, False


def _read_text(path: Path, *, gz: bool = False) -> str:
    data = path.read_bytes()
    if gz:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise UserError(
                f"{path}: not a readable gzip file ({exc}). Re-compress it with gzip, or give "
                "the uncompressed file."
            ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        ext = "".join(Path(path.name).suffixes[-2:])
        fix = (
            f"gunzip -c '{path}' | iconv -f LATIN1 -t UTF-8 | gzip > pool.utf8{ext}"
            if gz
            else f"iconv -f LATIN1 -t UTF-8 '{path}' > pool.utf8{path.suffix}"
        )
        where = "uncompressed byte" if gz else "byte"
        raise UserError(
            f"{path}: not valid UTF-8 at {where} {exc.start} (line {line}). Convert the file to "
            f"UTF-8 first, e.g. {fix}"
        ) from None


def _jsonl_iter(text: str) -> Iterator[tuple[int, Any]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            yield lineno, BadRow(f"not valid JSON ({exc.msg} at column {exc.colno})")


def _json_list_rows(path: Path, text: str) -> Rows:
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
    return Rows(path, "json", "row", iter(enumerate(data)))


def _csv_rows(path: Path, text: str, *, delimiter: str) -> Rows:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.DictReader(text.splitlines(keepends=True), delimiter=delimiter)

    def it() -> Iterator[tuple[int, Any]]:
        start = 2
        while True:
            try:
                rec = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield reader.line_num, BadRow(f"unreadable CSV ({exc})")
                start = reader.line_num + 1
                continue
            if None in rec:
                yield (
                    start,
                    BadRow(
                        f"has {len(rec) - 1 + len(rec[None])} fields, the header has {len(rec) - 1}"
                    ),
                )
            else:
                yield start, rec
            start = reader.line_num + 1

    if not reader.fieldnames:
        raise UserError(f"{path} has no header row. The first CSV line must name the fields.")
    return Rows(path, "csv", "line", it())


def _parquet_rows(path: Path) -> Rows:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad files
        raise UserError(f"{path}: not a readable Parquet file ({exc}).") from None
    if table.num_rows == 0:
        raise UserError(f"{path} holds no rows. Point selectllm at a file with instructions.")
    return Rows(path, "parquet", "row", _batched(table.to_batches()))


def _batched(batches: Any) -> Iterator[tuple[int, Any]]:
    row = 0
    for batch in batches:
        for rec in batch.to_pylist():
            yield row, rec
            row += 1


def _datasets_rows(path: Path) -> Rows:
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if not any((path / m).exists() for m in markers):
        raise UserError(
            f"{path} is a folder but not a Hugging Face dataset saved with save_to_disk (no "
            "dataset_info.json or state.json). Point at the file, or at the saved dataset folder."
        )
    from selectllm_local.errors import require

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
    return Rows(path, "datasets", "row", _batched(ds.data.to_batches()))
