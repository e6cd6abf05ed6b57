"""Splits: seeded, disjoint, test rows carry a reference, original records written back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from selectllm_local.data.splits import prompt_key, split_pool
from selectllm_local.errors import UserError
from selectllm_local.records import PoolItem
from tests.helpers import DOLLY, DOLLY_TESTSET, EXAMPLE_POOL, REPO, tiny_experiment_config


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


def test_split_drops_pool_rows_holding_a_drawn_test_prompt() -> None:
    """Rows that de-duplication keeps apart (case, citation markers) but that hold the same
    prompt as a drawn test row leave the pool; nothing else does."""
    items = _items(60)
    twins = [
        PoolItem(60 + i, f"t{i}", 61 + i, f"Q{i}[{i + 1}]", output=f"other answer {i}")
        for i in range(60)
    ]  # "Q0[1]" normalises to "q0", the prompt of item 0, with another answer
    removed: dict[str, int] = {}
    pool, test = split_pool(items + twins, test_size=20, seed=0, removed=removed)
    drawn = [it.uid.removeprefix("t") for it in test]  # i for item i and its twin alike
    one_of_pair = {i for i in drawn if drawn.count(i) == 1}  # the other copy was not drawn
    assert one_of_pair and removed == {"same_pair": 0, "same_prompt": len(one_of_pair),
                                       "same_input_answer": 0}  # fmt: skip
    assert len(pool) == 120 - 20 - len(one_of_pair)
    test_prompts = {prompt_key(it.instruction, it.input) for it in test}
    assert not [it for it in pool if prompt_key(it.instruction, it.input) in test_prompts]


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
    from selectllm_local.evaluation.testset import load_testset

    assert len(load_testset(tmp_path / "test.jsonl")) == 100


def test_cli_refuses_test_as_large_as_pool(tmp_path: Path) -> None:
    from selectllm_local.cli import app

    res = CliRunner().invoke(
        app, ["split", str(EXAMPLE_POOL), "--test", "1497", "--out", str(tmp_path)]
    )
    assert res.exit_code == 2 and "--test" in res.output


# -- test-set leak (issue 8, 3.1; issue 18) -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris[12] is big.[3]", "paris is big."),
        ("North America[b] is a continent[c].", "north america is a continent."),
        ("It won[note 3] twice[nb 1][n. 2].", "it won twice."),
        ("A claim[citation needed] here[when?].", "a claim here."),
        ("Tags [clarification needed] [dubious \u2013 discuss] [edit]", "tags"),
        ("  Spacing\n\tand   CASE  ", "spacing and case"),
        ("[name] and [BRAND] stay", "[name] and [brand] stay"),  # not citation markers
    ],
)
def test_normaliser_strips_every_citation_marker(text: str, expected: str) -> None:
    from selectllm_local.data.splits import normalise_text

    assert normalise_text(text) == expected


def _ex(instruction: str, input_text: str, reference: str):
    from selectllm_local.evaluation.testset import TestExample

    return TestExample(instruction, input_text, reference)


def test_overlap_rules_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    from selectllm_local.data.splits import remove_test_rows

    pool = [
        PoolItem(0, "0", 1, "Who wrote Hamlet?", "ctx A", "Shakespeare wrote it.[12]  In 1600."),
        PoolItem(1, "1", 2, "WHO wrote Hamlet?", "", "Marlowe, some say.[b]"),  # same prompt
        PoolItem(2, "2", 3, "Who wrote Hamlet?", "other ctx", "someone else"),
        PoolItem(3, "3", 4, "Summarise this.", "Long passage.[4]", "Short."),  # reworded task
        PoolItem(4, "4", 5, "Name a colour.", "", "Red"),
        PoolItem(5, "5", 6, "Name a colour.", "", "Short."),  # same answer, other prompt: stays
    ]
    # The first test copy lost its context and its marker: an exact (instruction, input) match
    # misses it; its prompt (no input) is also that of row 1, which answers differently.
    tests = [
        _ex("Who wrote Hamlet?", "", "shakespeare wrote it. in 1600."),
        _ex("What does the passage say?", "Long passage.", "Short."),
    ]
    with caplog.at_level("INFO"):
        kept, overlap = remove_test_rows(pool, tests)
    assert [it.index for it in kept] == [2, 4, 5]
    assert overlap.removed == {"same_pair": 1, "same_prompt": 1, "same_input_answer": 1}
    assert overlap.total == 3 and overlap.tests_found == 2
    assert "2 of 2 test examples found" in caplog.text
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # every example found


def test_warning_only_when_most_but_not_all_test_examples_match() -> None:
    """The warning means something: it fires when most of the test set is in the pool and the
    rest is not, never when all of it is found, none of it (a test set from elsewhere) or a
    minority (the pool is a sample of the test set's source)."""
    import logging

    from selectllm_local.data.splits import remove_test_rows

    pool = [PoolItem(0, "0", 1, "Q one", "", "A one"), PoolItem(1, "1", 2, "Q two", "", "A two")]

    def warnings(tests) -> list[str]:
        handler = _Records()
        logging.getLogger("selectllm_local.data.splits").addHandler(handler)
        try:
            remove_test_rows(pool, tests)
        finally:
            logging.getLogger("selectllm_local.data.splits").removeHandler(handler)
        return [r.getMessage() for r in handler.records if r.levelno >= logging.WARNING]

    assert warnings([_ex("Q one", "", "A one"), _ex("Q two", "", "A two")]) == []
    assert warnings([_ex("Elsewhere", "", "x"), _ex("Other", "", "y")]) == []
    partial = warnings([_ex("Q one", "", "A one"), _ex("Edited Q two", "", "A two, edited")])
    assert len(partial) == 1 and "1 of the 2 test examples match no row" in partial[0]
    sample = [_ex("Q one", "", "A one"), _ex("Elsewhere", "", "x"), _ex("Other", "", "y")]
    assert warnings(sample) == []


class _Records:
    """A logging handler that keeps the records (caplog's level depends on other tests)."""

    level = 0

    def __init__(self) -> None:
        self.records: list = []

    def handle(self, record) -> None:
        self.records.append(record)


def test_test_rows_leave_before_deduplication(tmp_path: Path) -> None:
    """A prompt held twice whose second copy is the test example: both copies go, neither is
    counted as a duplicate, and de-duplication cannot keep the first copy."""
    from selectllm_local.data import pool as data
    from selectllm_local.data.splits import TestOverlap

    rows = [
        {"instruction": "Why are plants green?", "context": "", "response": "Chlorophyll."},
        {"instruction": "Name a river.", "context": "", "response": "Nile."},
        {"instruction": "Why are plants  green?", "context": "", "response": "They reflect green."},
        {"instruction": "Name a river.", "context": "", "response": "Danube."},  # a duplicate
    ]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items, stats = data.load_pool(pool)  # without the test set: the first copy is kept
    assert [it.output for it in items] == ["Chlorophyll.", "Nile."] and stats.duplicates == 2
    leak = TestOverlap([_ex("why are plants green?", "", "They reflect green.")])
    items, stats = data.load_pool(pool, exclude=leak)
    assert [it.output for it in items] == ["Nile."]
    assert leak.removed == {"same_pair": 1, "same_prompt": 1, "same_input_answer": 0}
    assert stats.duplicates == 1 and stats.kept == 1
    with pytest.raises(UserError, match="are test examples"):
        data.load_pool(pool, exclude=TestOverlap([_ex("Why are plants green?", "", "x"),
                                                   _ex("Name a river.", "", "y")]))  # fmt: skip


def _surviving_test_prompts(items: list[PoolItem], tests: list) -> list[str]:
    """Test examples still in ``items``, by the code's own normaliser: the same prompt
    (instruction + input) or the same instruction + response."""
    from selectllm_local.data.splits import pair_key, prompt_key

    prompts = {prompt_key(it.instruction, it.input) for it in items}
    pairs = {pair_key(it.instruction, it.output or "") for it in items}
    return [
        t.instruction
        for t in tests
        if prompt_key(t.instruction, t.input) in prompts
        or pair_key(t.instruction, t.reference) in pairs
    ]


def test_no_paper_test_prompt_survives_in_the_dolly_experiment_pool(tmp_path: Path) -> None:
    """The shipped Dolly 15k and the shipped 1,000-row test split, through the experiment's own
    pool building: none of the 1,000 test prompts is left (before: 12 were, by this normaliser)."""
    from selectllm_local.evaluation.testset import load_testset
    from selectllm_local.experiment import load_experiment_config
    from selectllm_local.experiment.inputs import load_inputs

    tests = load_testset(DOLLY_TESTSET)
    assert len(tests) == 1000
    cfg_path = tiny_experiment_config(
        tmp_path, (f'"{EXAMPLE_POOL}"', f'"{DOLLY}"'), ("pool_limit = 200", "")
    )
    cfg = load_inputs(load_experiment_config(cfg_path, run_dir=tmp_path / "run"))
    assert _surviving_test_prompts(cfg.pool_items, tests) == []
    assert cfg.test_removed == {"same_pair": 1001, "same_prompt": 21, "same_input_answer": 1}
    assert cfg.test_overlap == 1023 and len(cfg.pool_items) == 15014 - 1023 - 173
    # the same check fails on the pool with only the de-duplication: it can tell
    from selectllm_local.data import pool as data

    everything, _ = data.load_pool(DOLLY)
    assert len(_surviving_test_prompts(everything, tests)) == 1000


def test_smollm2_experiment_pool_is_leak_free() -> None:
    """The shipped experiment config, as a dry run loads it: its sampled pool holds no test
    prompt either, and it reads the shipped data (no path outside the repository)."""
    from selectllm_local.evaluation.testset import load_testset
    from selectllm_local.experiment import load_experiment_config
    from selectllm_local.experiment.inputs import load_inputs

    cfg = load_experiment_config(REPO / "experiments" / "smollm2_dolly.toml", require_models=False)
    assert cfg.pool == DOLLY and cfg.test_set == DOLLY_TESTSET
    data = load_inputs(cfg)
    assert 0 < len(data.pool_items) <= 15014 - 1023 and data.test_overlap == 1023
    assert _surviving_test_prompts(data.pool_items, load_testset(DOLLY_TESTSET)) == []


def test_experiment_config_uses_the_normalised_match(tmp_path: Path) -> None:
    """A pool row that differs from a test example only by citation markers is dropped."""
    from selectllm_local.evaluation.testset import load_testset
    from selectllm_local.experiment import load_experiment_config
    from selectllm_local.experiment.inputs import load_inputs

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
    data = load_inputs(cfg)
    assert data.test_overlap == 1 and len(data.pool_items) == 40
    assert data.test_removed["same_pair"] == 1
    # the run directory records the counts by reason beside the pool it wrote
    from selectllm_local.experiment.runner import _write_pool

    written = _write_pool(cfg, data)
    assert len(written.read_text().splitlines()) == 40
    info = json.loads((tmp_path / "run" / "data" / "pool.key.json").read_text())
    assert info["rows"] == 40 and info["test_rows_removed"] == {
        "total": 1, "same_pair": 1, "same_prompt": 0, "same_input_answer": 0,
    }  # fmt: skip
    mtime = written.stat().st_mtime_ns
    assert (
        _write_pool(cfg, data) == written and written.stat().st_mtime_ns == mtime
    )  # not rewritten
    assert data.summary.test_removed == data.test_removed  # saved in experiment.json
    assert data.summary.to_dict() == {  # experiment.json's data block keeps its keys
        "pool_rows": 40, "test_rows": len(data.test_rows), "nll_test_rows": len(data.nll_rows),
        "test_overlap": 1, "test_removed": data.test_removed,
    }  # fmt: skip
