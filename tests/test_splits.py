"""Splits: seeded, disjoint, test rows carry a reference, original records written back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import EXAMPLE_POOL
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
