"""Selection diagnostics: position bias, preferences, overlap, and ``selectllm compare``.

The measures are pure functions, tested on scripted picks whose answer is known; the run-directory
side runs the real pipeline (packaged embedder, FAISS) with the scripted ``fake`` backend, whose
default script always picks the first candidates shown: a selector that only echoes positions.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from selectllm_local.review.diagnostics import (
    PositionBias,
    chi2_sf,
    overlap,
    position_bias,
    position_pairs,
    preferences,
)
from tests.helpers import EXAMPLE_POOL

CLI = [sys.executable, "-m", "selectllm_local"]


# -- statistics ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("x", "df", "p"),
    [(3.841458820694124, 1, 0.05), (9.487729036781154, 4, 0.05), (6.634896601021214, 1, 0.01),
     (2.0, 2, math.exp(-1.0)), (10.0, 2, math.exp(-5.0)), (0.0, 3, 1.0)],
)  # fmt: skip
def test_chi2_sf_known_values(x: float, df: int, p: float) -> None:
    assert chi2_sf(x, df) == pytest.approx(p, rel=1e-9, abs=1e-12)


def test_chi2_sf_agrees_with_scipy_over_a_grid() -> None:
    from scipy import stats  # a dev dependency: an independent implementation to agree with

    for df in (1, 2, 3, 5, 10, 31, 50):
        for x in (0.01, 0.5, 1.0, df - 0.5, df + 1.5, 2.0 * df, 40.0, 200.0, 800.0):
            assert chi2_sf(x, df) == pytest.approx(stats.chi2.sf(x, df), rel=1e-7, abs=1e-300)


# -- position bias -------------------------------------------------------------------------------
def test_all_picks_at_position_one_are_flagged() -> None:
    d = position_bias([(1, 5)] * 100)
    assert d is not None and d.position_bias is True and d.warning is not None
    assert d.p_value < 1e-50
    assert d.to_dict()["positions"][0] == {
        "position": 1, "picks": 100, "share": 1.0, "expected": 20.0, "expected_share": 0.2
    }  # fmt: skip
    assert "position 1 took 100% of picks vs 20% expected" in d.warning
    assert "--mode logprobs --permutations 5" in d.warning
    assert "twice" in d.rule or "2x" in d.rule
    assert PositionBias.from_dict(d.to_dict()) == d  # summary.json reads back as it was


def test_picks_spread_evenly_are_not_flagged() -> None:
    d = position_bias([(p, 5) for p in range(1, 6)] * 20)
    assert d is not None and d.position_bias is False and d.warning is None
    assert d.p_value > 0.99
    assert [r.picks for r in d.positions] == [20] * 5


def test_expectation_sums_one_over_n_for_mixed_subset_sizes() -> None:
    d = position_bias([(1, 2), (2, 4), (4, 4)])
    assert d is not None
    assert [r.expected for r in d.positions] == [1.0, 1.0, 0.5, 0.5]
    assert sum(r.expected for r in d.positions) == pytest.approx(3)
    assert d.df == 3


def test_few_picks_over_twice_expected_are_not_significant_enough() -> None:
    # position 1: 2 picks vs 0.6 expected (over 2x), but 3 picks cannot reject a blind picker
    d = position_bias([(1, 5), (1, 5), (2, 5)])
    assert d is not None and d.p_value > 0.1 and d.position_bias is False


def test_logprob_mode_hints_at_permutations_and_names_its_basis() -> None:
    one = position_bias([(1, 6)] * 30, mode="logprobs", permutations=1)
    many = position_bias([(1, 6)] * 30, mode="logprobs", permutations=6)
    assert one and many and one.position_bias and many.position_bias
    assert one.warning is not None and many.warning is not None
    assert "try --permutations 6" in one.warning and "--mode" not in one.warning
    assert "averaging 6 orders" in many.warning
    assert "candidate list" in one.basis
    assert position_bias([]) is None


def test_position_pairs_skip_no_call_and_fallback_and_size_later_rounds() -> None:
    subsets = [{"id": i, "round": 1, "candidates": list(range(6 * i, 6 * i + 6))} for i in range(4)]
    responses = [
        {"subset_id": 0, "round": 1, "picks": [0], "positions": [1], "attempts": 1},
        {"subset_id": 1, "round": 1, "picks": [8], "positions": [3], "attempts": 1},
        {"subset_id": 2, "round": 1, "picks": [12], "positions": [1], "attempts": 2,
         "fallback": True},
        {"subset_id": 3, "round": 1, "picks": [18], "positions": [1], "attempts": 0},
        # round 2: 4 winners, K 6 -> one subset of all 4
        {"subset_id": 0, "round": 2, "picks": [8, 0], "positions": [2, 4], "attempts": 1},
    ]  # fmt: skip
    assert position_pairs(subsets, responses, 6) == [(1, 6), (3, 6), (2, 4), (4, 4)]


# -- preferences and overlap ---------------------------------------------------------------------
def test_preferences_compare_length_categories_and_clusters_with_the_pool() -> None:
    pool = [
        {"instruction": "a " * 10, "input": "", "category": "qa"},
        {"instruction": "b " * 2, "input": "c", "category": "qa"},
        {"instruction": "d", "input": "", "category": "math"},
        {"instruction": "e", "input": "", "category": "math"},
    ]
    p = preferences(pool, [0, 1], np.array([0, 0, 1, 1]))
    assert p.to_dict()["length_words"] == {
        "pool_mean": 3.75, "pool_median": 2.0, "selected_mean": 6.5, "selected_median": 6.5
    }  # fmt: skip
    assert p.categories is not None and p.clusters is not None
    cats = {r["category"]: r for r in p.categories.shares}
    assert cats["qa"]["selected_share"] == 1.0 and cats["math"]["selected_share"] == 0.0
    assert p.categories.total_variation == 0.5 and p.categories.covered == 1
    assert p.clusters.total_variation == 0.5 and p.clusters.of == 2
    spread = preferences(pool, [0, 2], np.array([0, 0, 1, 1])).clusters
    assert spread is not None and spread.total_variation == 0
    assert preferences([{"instruction": "x"}], [0]).categories is None  # no categories: none


def test_overlap_against_two_random_selections() -> None:
    o = overlap(range(10), range(5, 15), 100)
    assert (o.intersection, o.union, o.jaccard) == (5, 15, round(1 / 3, 4))
    assert o.expected_intersection == 1.0 and o.ratio_to_random == 5.0
    same = overlap(range(20), range(20), 40)
    assert same.jaccard == 1.0 and same.expected_intersection == 10.0
    assert same.ratio_to_random == 2.0


# -- run directories ----------------------------------------------------------------------------
def _pool(tmp: Path, n: int) -> Path:
    pool = tmp / f"pool{n}.jsonl"
    with open(EXAMPLE_POOL, encoding="utf-8") as fh:
        pool.write_text("".join(fh.readline() for _ in range(n)), "utf-8")
    return pool


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A generate run (a tournament: 20 subsets, budget 8), a logprobs run of the same plan, a
    random baseline in the first run directory, and a random baseline of another pool."""
    from selectllm_local.backends.fake import FakeBackend
    from selectllm_local.baselines.run import baseline_run
    from selectllm_local.config import EngineConfig, PlanConfig, SelectConfig, SelectorConfig
    from selectllm_local.run.pipeline import plan_run, select_run

    tmp = tmp_path_factory.mktemp("diag")
    pool = _pool(tmp, 120)
    gen, lp = tmp / "gen", tmp / "lp"
    plan_run(PlanConfig(pool=pool, budget=8, n_clusters=6, run_dir=gen), progress=False)
    shutil.copytree(gen, lp)  # the same plan, embedded once
    engine = EngineConfig(backend="fake", model="fake")
    for run, mode in ((gen, "generate"), (lp, "logprobs")):
        plan = PlanConfig(pool=pool, budget=8, n_clusters=6, run_dir=run)
        cfg = SelectConfig(plan=plan, selector=SelectorConfig(mode=mode), engine=engine)
        select_run(cfg, backend=FakeBackend(), progress=False)
    base = baseline_run("random", PlanConfig(pool=pool, budget=8, run_dir=gen), progress=False)
    other = baseline_run(
        "random", PlanConfig(pool=_pool(tmp, 60), budget=8, run_dir=tmp / "other"), progress=False
    )
    return {"gen": gen, "lp": lp, "base": base.out_dir, "other": other.out_dir, "tmp": tmp}


def test_select_summary_and_report_flag_an_echoing_selector(runs: dict[str, Path]) -> None:
    from selectllm_local.review.report import render_report

    summary = json.loads((runs["gen"] / "summary.json").read_text("utf-8"))
    assert summary["rounds"] == 2
    bias = summary["position_bias"]
    assert bias["position_bias"] is True and bias["p_value"] < 1e-6
    assert bias["positions"][0]["share"] > 2 * bias["positions"][0]["expected_share"]
    html = render_report(runs["gen"]).read_text("utf-8")
    assert "Position of the pick" in html
    assert "the selector may be echoing positions" in html and "p = " in html
    lp = json.loads((runs["lp"] / "summary.json").read_text("utf-8"))["position_bias"]
    assert lp["mode"] == "logprobs" and "--permutations" in lp["warning"]


def test_later_round_sizes_match_the_tournament_the_selection_ran(runs: dict[str, Path]) -> None:
    """The sizes read back from the files are those ``subsets.next_round`` dealt."""
    from selectllm_local.cluster.subsets import next_round
    from selectllm_local.run.store import read_jsonl

    run = runs["gen"]
    subsets, responses = read_jsonl(run / "subsets.jsonl"), read_jsonl(run / "responses.jsonl")
    labels = np.load(run / "clusters.npy")
    by_key = {(r["round"], r["subset_id"]): r for r in responses}
    winners = [p for s in subsets for p in by_key[(1, s["id"])]["picks"]]
    round2 = next_round(winners, labels, 8, 2, subset_size=6, seed=0)
    sizes = {(1, s["id"]): len(s["candidates"]) for s in subsets}
    sizes |= {(2, s.id): len(s.candidates) for s in round2}
    expected = [
        (p, sizes[key])
        for key, r in sorted(by_key.items())
        if r["attempts"] > 0 and not r["fallback"]
        for p in r["positions"]
    ]
    assert any(n for _, n in expected if n != 6)  # round two's subsets are not of size K
    assert position_pairs(subsets, responses, 6) == expected


def test_compare_prints_overlap_and_both_diagnostics(runs: dict[str, Path]) -> None:
    r = subprocess.run(
        [*CLI, "compare", str(runs["gen"]), str(runs["base"])],
        capture_output=True, text=True, timeout=600, env=_env(),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    out = " ".join(r.stdout.split())
    assert "Overlap:" in out and "random selections of these sizes share 0.5" in out
    assert "position bias flagged" in out and "baseline random" in out


def test_compare_json_counts_the_shared_picks(runs: dict[str, Path]) -> None:
    from typer.testing import CliRunner

    from selectllm_local.cli import app

    r = CliRunner().invoke(app, ["compare", str(runs["gen"]), str(runs["lp"]), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)

    def picks(run: Path) -> set[int]:
        rows = (run / "selected.jsonl").read_text("utf-8").splitlines()
        return {json.loads(line)["selectllm"]["index"] for line in rows}

    a, b = picks(runs["gen"]), picks(runs["lp"])
    assert doc["overlap"]["intersection"] == len(a & b)
    assert doc["overlap"]["expected_intersection"] == pytest.approx(8 * 8 / 120, abs=1e-3)
    assert doc["a"]["position_bias"]["position_bias"] is True
    assert doc["b"]["position_bias"]["mode"] == "logprobs"
    assert doc["a"]["preferences"]["categories"]["covered"] >= 1
    assert doc["same_pool"]["checked_by"] == "pool.jsonl of both"


def test_compare_refuses_a_folder_that_is_not_a_finished_selection(runs: dict[str, Path]) -> None:
    plan_only = runs["tmp"] / "plan-only"
    plan_only.mkdir()
    (plan_only / "pool.jsonl").write_text("", "utf-8")
    for bad, says in (
        (plan_only, "no selected.jsonl and no summary.json"),
        (runs["tmp"] / "missing", "does not exist"),
    ):
        r = subprocess.run(
            [*CLI, "compare", str(runs["gen"]), str(bad)],
            capture_output=True, text=True, timeout=600, env=_env(),
        )  # fmt: skip
        err = " ".join(r.stderr.split())
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert str(bad) in err and says in err, err


def test_compare_refuses_selections_of_different_pools(runs: dict[str, Path]) -> None:
    r = subprocess.run(
        [*CLI, "compare", str(runs["base"]), str(runs["other"])],
        capture_output=True, text=True, timeout=600, env=_env(),
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "different pools" in " ".join(r.stderr.split())


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "COLUMNS": "200"}
