"""The run store: what a kill at any instant leaves behind is readable and resumable.

A run directory is written by appends (``responses.jsonl``) and atomic replaces (everything else).
These tests cut files the way a SIGKILL mid-write does and check that readers ignore the torn tail,
that appending after a torn tail starts on a fresh line, and that a failed atomic write leaves the
previous file and no temporary behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from selectllm_local.run.store import (
    AppendLog,
    RunStore,
    atomic_path,
    file_hash,
    read_json,
    read_jsonl,
    save_npy,
    stable_hash,
    write_json,
    write_jsonl,
)


def _torn(path: Path, rows: list[dict], tail: str) -> None:
    """Complete lines for ``rows``, then a partial line ``tail`` with no newline (a kill)."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail, "utf-8")


def test_torn_last_line_is_ignored_by_readers(tmp_path: Path) -> None:
    path = tmp_path / "responses.jsonl"
    _torn(path, [{"a": 1}, {"a": 2}], '{"a": 3, "tex')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_append_after_torn_tail_repairs_it_and_appends_survive(tmp_path: Path) -> None:
    path = tmp_path / "responses.jsonl"
    _torn(path, [{"a": 1}], '{"a": 2, "partial": tr')
    with AppendLog(path) as log:
        log.append({"a": 2})
        # each append is on disk before append returns: a reader sees it while the log is open
        assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    with AppendLog(path) as log:  # a resumed run appends after the earlier lines
        log.append({"a": 3})
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert path.read_text("utf-8").endswith("\n") and "partial" not in path.read_text("utf-8")


def test_torn_first_line_and_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "responses.jsonl"
    path.write_text('{"a": 1', "utf-8")  # killed while writing the very first line
    with AppendLog(path) as log:
        log.append({"a": 1})
    assert read_jsonl(path) == [{"a": 1}]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", "utf-8")
    with AppendLog(empty) as log:
        log.append({"b": 2})
    assert read_jsonl(empty) == [{"b": 2}]


def test_failed_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    write_json(path, {"version": 1})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text('{"version": 2, "half', "utf-8")
        raise RuntimeError("killed mid-write")
    assert read_json(path) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary left


def test_atomic_writers_round_trip(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "rows.jsonl", ({"i": i, "t": "é"} for i in range(3)))
    assert read_jsonl(tmp_path / "rows.jsonl") == [{"i": i, "t": "é"} for i in range(3)]
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    save_npy(tmp_path / "emb.npy", arr)
    assert np.array_equal(np.load(tmp_path / "emb.npy"), arr)
    assert oct((tmp_path / "emb.npy").stat().st_mode & 0o777) != oct(0o600)  # usual permissions


def test_manifest_records_and_invalidates_stages(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    assert not store.stage_done("clusters", "k1") and store.stage_info("clusters") == {}
    store.mark_done("clusters", "k1", k=8)
    assert store.stage_done("clusters", "k1") and not store.stage_done("clusters", "k2")
    assert store.stage_info("clusters")["k"] == 8
    assert RunStore(tmp_path / "run").stage_done("clusters", "k1")  # persisted, not in memory
    store.invalidate("clusters")
    assert not store.stage_done("clusters", "k1")


def test_hashes_are_stable(tmp_path: Path) -> None:
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
    f = tmp_path / "f.txt"
    f.write_text("x", "utf-8")
    h = file_hash(f)
    f.write_text("y", "utf-8")
    assert file_hash(f) != h
