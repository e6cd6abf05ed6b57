"""Splits: seeded, disjoint, test rows carry a reference, original records written back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DOLLY, EXAMPLE_POOL, REPO, requires_shared_data
from typer.testing import CliRunner

from selectllm_local.errors import UserError
from selectllm_local.records import PoolItem
from selectllm_local.splits import split_pool


def _items(n: int, labelled_every: int = 1) -> list[PoolItem]:
    return [
        PoolItem(
            index=i,
            uid=str(i),
            source_row=i + 1,
            instruction=f"q{i}",
            output=f"a{i}" if i % labelled_every == 0 else None,
        )
        for i in range(n)
    ]


def test_split_sizes_disjoint_seeded() -> None:
    items = _items(100)
    pool, test = split_pool(items, test_size=30, seed=0)
    assert len(pool) == 70 and len(test) == 30
    assert not {it.uid for it in pool} & {it.uid for it in test}
    assert [it.index for it in pool] == sorted(it.index for it in pool)  # source order kept
    again = split_pool(items, test_size=30, seed=0)
    assert [it.uid for it in again[1]] == [it.uid for it in test]
    assert [it.uid for it in split_pool(items, test_size=30, seed=1)[1]] != [it.uid for it in test]


def test_test_rows_have_a_reference() -> None:
    pool, test = split_pool(_items(100, labelled_every=3), test_size=20, seed=0)
    assert all(it.output for it in test)
    assert len(pool) == 80


@pytest.mark.parametrize(
    ("size", "match"), [(0, "at least 1"), (100, "smaller than"), (40, "only 34")]
)
def test_refusals(size: int, match: str) -> None:
    with pytest.raises(UserError, match=match):
        split_pool(_items(100, labelled_every=3), test_size=size, seed=0)


def test_cli_writes_original_records(tmp_path: Path) -> None:
    from selectllm_local.cli import app

    res = CliRunner().invoke(
        app, ["split", str(EXAMPLE_POOL), "--test", "100", "--out", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    pool = [json.loads(x) for x in (tmp_path / "pool.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert len(test) == 100 and len(pool) == 1497 - 100  # 3 duplicates dropped on load
    assert set(test[0]) == {"instruction", "context", "response", "category"}
    source = {
        json.dumps(json.loads(x), sort_keys=True) for x in EXAMPLE_POOL.read_text().splitlines()
    }
    assert all(json.dumps(r, sort_keys=True) in source for r in test + pool)
    # the test set is usable by evaluate as is
    from selectllm_local.evaluate import load_testset

    assert len(load_testset(tmp_path / "test.jsonl")) == 100


def test_cli_refuses_test_as_large_as_pool(tmp_path: Path) -> None:
    from selectllm_local.cli import app

    res = CliRunner().invoke(
        app, ["split", str(EXAMPLE_POOL), "--test", "1497", "--out", str(tmp_path)]
    )
    assert res.exit_code == 2 and "--test" in res.output


# -- test-set leak (issue 8, 3.1) ---------------------------------------------------------------


def test_overlap_ignores_citation_markers_case_and_spacing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from selectllm_local.evaluate import TestExample
    from selectllm_local.splits import remove_test_rows

    pool = [
        PoolItem(0, "0", 1, "Who wrote Hamlet?", "ctx A", "Shakespeare wrote it.[12]  In 1600."),
        PoolItem(1, "1", 2, "Who wrote Hamlet?", "other ctx", "someone else"),
        PoolItem(2, "2", 3, "Name a colour.", "", "Red"),
    ]
    # The test copy lost its context and its marker: an exact (instruction, input) match misses it.
    tests = [
        TestExample("Who wrote Hamlet?", "", "shakespeare wrote it. in 1600."),
        TestExample("Unrelated?", "", "x"),
    ]
    with caplog.at_level("WARNING"):
        kept, removed = remove_test_rows(pool, tests)
    assert removed == 1 and [it.index for it in kept] == [1, 2]
    assert "only 1 rows" in caplog.text and "2 test examples" in caplog.text


@requires_shared_data
def test_paper_dolly_test_split_removes_991_rows_of_dolly_15k() -> None:
    """The shipped Dolly test split vs Dolly 15k: 991 rows leave the pool (833 by exact match)."""
    from selectllm_local import data
    from selectllm_local.evaluate import load_testset
    from selectllm_local.splits import remove_test_rows

    tests = load_testset(REPO / "examples" / "testsets" / "dolly")
    items, _ = data.load_pool(DOLLY)
    kept, removed = remove_test_rows(items, tests)
    assert (len(items), len(tests), removed) == (14823, 1000, 991)
    # the longest-first baseline's favourites: no test answer may survive among them
    refs = {" ".join(t.reference.split()).casefold() for t in tests}
    longest = sorted(kept, key=lambda it: -len(it.output or ""))[:3000]
    leaked = [it for it in longest if " ".join((it.output or "").split()).casefold() in refs]
    assert leaked == []


def test_experiment_config_uses_the_normalised_match(tmp_path: Path) -> None:
    """A pool row that differs from a test example only by citation markers is dropped."""
    from selectllm_local.evaluate import load_testset
    from selectllm_local.experiment import load_experiment_config

    test = load_testset(REPO / "examples" / "testsets" / "dolly")[0]
    rows = [
        {
            "instruction": test.instruction,
            "context": "a context the test copy lost",
            "response": test.reference + " [3]",
        }
    ] + [{"instruction": f"task {i}", "context": "", "response": f"answer {i}"} for i in range(40)]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = (REPO / "configs" / "tiny_ci.toml").read_text()
    text = text.replace('"../examples/dolly_sample_1500.jsonl"', f'"{pool}"')
    text = text.replace('"../examples', f'"{REPO}/examples').replace("pool_limit = 200", "")
    text = text.replace("limit = 8 ", "limit = 1 ")  # [evaluate] limit: one test example
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(text)
    cfg = load_experiment_config(cfg_path, run_dir=tmp_path / "run")
    assert cfg.test_overlap == 1 and len(cfg.pool_items) == 40
