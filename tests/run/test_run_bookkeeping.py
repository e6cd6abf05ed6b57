"""Run bookkeeping: the cached stage, the build-then-rename, the timer and the completion marker,
and that run directories written before them are still finished (nothing is redone).

``tests/data/old_format_run/run`` is a plan + select run directory written by the code of
commit b8dc753 (``regen.py`` beside it says how); ``experiment/`` holds a real experiment cell's
``done.json`` and ``cell.json`` and its ``data/pool.key.json`` (commit 0edf93f).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from selectllm_local.run.store import (
    RunStore,
    build_once,
    marker_matches,
    read_json,
    read_marker,
    timed,
    write_marker,
)

OLD = Path(__file__).parents[1] / "data" / "old_format_run"


def test_cached_computes_once_then_loads(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    calls: list[str] = []

    def run(key: str) -> tuple[list[int], bool]:
        def compute() -> list[int]:
            calls.append(key)
            return [1, 2, 3]

        def save(v: list[int]) -> dict:
            (tmp_path / "out.txt").write_text(",".join(map(str, v)))
            return {"n": len(v)}

        def load(info: dict) -> list[int]:
            assert info["n"] == 3 and info["key"] == key
            return [int(x) for x in (tmp_path / "out.txt").read_text().split(",")]

        return store.cached("s", key, outputs=["out.txt"], load=load, compute=compute, save=save)

    assert run("a") == ([1, 2, 3], False)
    assert run("a") == ([1, 2, 3], True) and calls == ["a"]
    assert run("b") == ([1, 2, 3], False) and calls == ["a", "b"]  # another key: computed
    (tmp_path / "out.txt").unlink()
    assert run("b")[1] is False and calls == ["a", "b", "b"]  # a missing output: computed


def test_build_once_renames_a_finished_build_and_leaves_nothing_of_a_failed_one(
    tmp_path: Path,
) -> None:
    out = tmp_path / "model"
    built: list[Path] = []

    def build(tmp: Path) -> None:
        assert tmp.parent == tmp_path and tmp != out and tmp.is_dir()
        built.append(tmp)
        (tmp / "weights").write_text("w")

    def fail(tmp: Path) -> None:
        (tmp / "half").write_text("h")
        raise RuntimeError("killed")

    assert build_once(out, build) == out and (out / "weights").read_text() == "w"
    assert build_once(out, fail) == out and len(built) == 1  # done: not built again
    with pytest.raises(RuntimeError):
        build_once(tmp_path / "other", fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left
    (out / "weights").write_text("old")
    build_once(out, build, done=lambda _: False)  # rebuilt in place of the old
    assert (out / "weights").read_text() == "w" and len(built) == 2


def test_build_once_replaces_an_unfinished_leftover(tmp_path: Path) -> None:
    out = tmp_path / "m"
    (out / "junk").parent.mkdir()
    (out / "junk").write_text("x")

    def build(tmp: Path) -> None:
        (tmp / "done.json").write_text("{}")

    build_once(out, build, done=lambda p: (p / "done.json").exists())
    assert sorted(p.name for p in out.iterdir()) == ["done.json"]


def test_timed_records_wall_and_cpu_also_when_the_block_raises() -> None:
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    with timed("busy", wall, cpu_into=cpu) as t:
        end = time.process_time() + 0.05
        while time.process_time() < end:
            pass
    assert wall["busy"] == t.wall >= t.cpu * 0.5 and cpu["busy"] == t.cpu >= 0.05
    with pytest.raises(ValueError), timed("failed", wall):
        raise ValueError
    assert "failed" in wall


def test_marker_round_trip_and_mismatch(tmp_path: Path) -> None:
    m = tmp_path / "x" / "done.json"
    assert read_marker(m) is None and not marker_matches(m, "k")
    write_marker(m, "k", rows=3)
    assert read_marker(m) == {"key": "k", "rows": 3}
    assert marker_matches(m, "k") and marker_matches(m, "k", rows=3)
    assert not marker_matches(m, "k2") and not marker_matches(m, "k", rows=4)
    m.write_text("[1, 2]")  # not a marker
    assert read_marker(m) is None


def test_old_experiment_markers_still_read_as_finished(tmp_path: Path) -> None:
    """A cell written before the marker helpers (done.json, cell.json, pool.key.json) counts as
    finished for its own key, and the runner keeps such a cell instead of starting it afresh."""
    from selectllm_local.experiment import runner

    cell = tmp_path / "cells" / "random" / "b200-s0"
    shutil.copytree(OLD / "experiment", cell)
    done = read_marker(cell / "done.json")
    key = read_json(cell / "cell.json")["key"]
    assert done is not None and done["key"] == key and done["rougeL_f1"] > 0
    assert runner._finished(done, key, done["nll_key"])
    assert not runner._finished(done, key, None)  # NLL asked differently: the cell runs again
    runner._prepare_cell_dir(cell, key)  # same key: every finished file stays
    assert (cell / "done.json").is_file() and (cell / "pool.key.json").is_file()
    pool = read_json(cell / "pool.key.json")
    info = {k: v for k, v in pool.items() if k != "key"}
    assert marker_matches(cell / "pool.key.json", pool["key"], **info)
    runner._prepare_cell_dir(cell, "another key")  # a changed configuration: afresh
    assert sorted(p.name for p in cell.iterdir()) == ["cell.json"]


def test_old_select_run_dir_resumes_without_redoing_work(tmp_path: Path) -> None:
    """A plan + select run directory of the old code: every stage is reused, no prompt is sent,
    and the selection and the selected file are byte for byte the old ones."""
    from selectllm_local.backends.fake import FakeBackend
    from selectllm_local.config import EngineConfig, PlanConfig, SelectConfig
    from selectllm_local.run.pipeline import plan_run, select_run

    pool = tmp_path / "pool.jsonl"
    shutil.copy(OLD / "pool.jsonl", pool)
    run = tmp_path / "run"
    shutil.copytree(OLD / "run", run)
    selected = (run / "selected.jsonl").read_bytes()
    plan = PlanConfig(pool=pool, budget=8, n_clusters=6, run_dir=run)
    planned = plan_run(plan, progress=False)
    assert planned.reused == {"pool": True, "clusters": True, "subsets": True}
    assert planned.embeddings_cached
    old_plan = read_json(OLD / "run" / "plan_summary.json")
    new_plan = planned.summary.to_dict()
    assert list(new_plan) == list(old_plan)
    assert all(list(new_plan[k]) == list(v) for k, v in old_plan.items() if isinstance(v, dict))
    cfg = SelectConfig(plan=plan, engine=EngineConfig(backend="fake", model="fake"))
    out = select_run(cfg, backend=FakeBackend(), progress=False)
    counts = out.summary.counts
    assert counts.sent_this_run == 0 and counts.resumed == counts.subsets == 12
    assert (run / "selected.jsonl").read_bytes() == selected
    old = read_json(OLD / "run" / "summary.json")
    assert out.selected == [r["selectllm"]["index"] for r in _rows(run)]
    assert out.summary.selected == old["selected"] and out.summary.rounds == old["rounds"]
    # the summary keeps the old file's keys (and order): --json users see the same document
    assert list(out.summary.to_dict()) == list(old)
    assert list(out.summary.to_dict()["counts"]) == list(old["counts"])


def _rows(run: Path) -> list[dict]:
    import json

    return [json.loads(x) for x in (run / "selected.jsonl").read_text("utf-8").splitlines()]
