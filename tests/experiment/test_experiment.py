"""Experiment runner: validation up front, the tiny CI experiment end to end, resume after a kill."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selectllm_local.baselines.registry import baseline_options
from selectllm_local.errors import UserError
from selectllm_local.experiment import load_experiment_config, run_experiment
from selectllm_local.experiment.inputs import load_inputs
from tests.helpers import HANG_GUARD, REPO, TINY_CI, tiny_experiment_config

TINY = TINY_CI


METHODS = 'methods = ["select", "random", "kcenter", "cluster-random"]'


@pytest.mark.parametrize(
    ("replace", "match"),
    [
        (
            (METHODS, 'methods = ["random", "magic"]'),
            r"\[experiment\] methods: unknown method 'magic'",
        ),
        (
            ("budgets = [8, 16]", "budgets = [8, 201]"),
            r"\[experiment\] budgets \[201\] outside 1..200",
        ),
        (('test_set = "', 'test_set = "/nowhere/'), r"\[experiment\] test_set"),
        (("lora_r = 8", "lora_rank = 8"), r"\[finetune\] has unknown key\(s\): lora_rank"),
        (("lora_r = 8", "lora_r = 0"), "--lora-r"),
        (("[evaluate]", "[evaluation]"), "unknown section"),
        (
            ('base_model = "tiny:tiny-llama"', 'base_model = "/no/model"'),
            r"\[experiment\] base_model",
        ),
        (('model = "tiny:tiny-qwen2"', 'modell = "x"'), r"\[engine\] has unknown key\(s\): modell"),
        (("[engine]", "[select]"), r"\[select\] is now \[selector\]"),
        (("limit = 8 ", "limit = 0 "), r"--limit \(evaluate.limit"),
        ((METHODS, 'methods = ["select:guess"]'), r"'select:guess' has an unknown variant"),
        (("pool_limit = 200 ", "pool_sample = 0 "), r"pool_sample must be a positive integer"),
        (("pool_limit = 200 ", "pool_limit = 200\npool_sample = 50 "), "not both"),
        (
            ("pool_limit = 200 ", "pool_limit = 200\ntest_sample = 5\nnll_sample = 4 "),
            r"nll_sample = 4 is less than the 5 rows answered",
        ),
        (
            ("pool_limit = 200 ", "pool_limit = 200\nnll_sample = 0 "),
            "nll_sample must be a positive",
        ),
        (("limit = 8 ", "limit = 8\nnll_limit = -1 "), r"--nll-limit \(evaluate.nll_limit"),
    ],
)
def test_bad_configs_fail_before_heavy_work(tmp_path: Path, replace: tuple, match: str) -> None:
    cfg = tiny_experiment_config(tmp_path, replace)
    with pytest.raises(UserError, match=match):
        run_experiment(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_samples_are_seeded_fixed_and_cleaned_against_the_whole_test_set(tmp_path: Path) -> None:
    """pool_sample / test_sample draw the same rows every time (sample_seed), in file order; the
    pool is cleaned against all test examples, not only the sampled ones."""
    from selectllm_local.experiment.cells import plan_dir_of

    cfg_path = tiny_experiment_config(
        tmp_path,
        ("pool_limit = 200 ", "pool_sample = 300\ntest_sample = 5\nselection_seed = 0 "),
        (METHODS, 'methods = ["select:logprobs", "select:generate", "random"]'),
        ("limit = 8 ", "# no limit "),
    )
    a, b = (
        load_inputs(load_experiment_config(cfg_path)),
        load_inputs(load_experiment_config(cfg_path)),
    )
    assert len(a.pool_items) == 300 and len(a.test_examples) == 5
    assert [i.uid for i in a.pool_items] == [i.uid for i in b.pool_items]
    assert a.test_examples == b.test_examples
    rows = [it.source_row for it in a.pool_items]
    assert rows == sorted(rows)  # the sample keeps the file's order
    full = load_inputs(
        load_experiment_config(
            tiny_experiment_config(tmp_path, ("limit = 8 ", "# no limit "), name="f.toml")
        )
    )
    assert a.test_overlap == full.test_overlap  # same rows removed as with every test example
    other = tiny_experiment_config(
        tmp_path, ("pool_limit = 200 ", "pool_sample = 300\nsample_seed = 1 "), name="o.toml"
    )
    assert {i.uid for i in load_inputs(load_experiment_config(other)).pool_items} != {
        i.uid for i in a.pool_items
    }
    # NLL rows: the answered rows plus a seeded draw of the others; the answered rows unchanged
    assert a.nll_rows == a.test_rows and a.test_examples == [
        a.all_test_examples[r] for r in a.test_rows
    ]
    more = tiny_experiment_config(
        tmp_path,
        ("pool_limit = 200 ", "pool_sample = 300\ntest_sample = 5\nnll_sample = 40 "),
        ("limit = 8 ", "# no limit "),
        name="n.toml",
    )
    m1, m2 = (load_inputs(load_experiment_config(more)) for _ in range(2))
    assert m1.test_rows == a.test_rows and m1.test_key == a.test_key
    assert set(m1.test_rows) < set(m1.nll_rows) and len(m1.nll_rows) == 40
    assert m1.nll_rows == m2.nll_rows == sorted(m1.nll_rows)
    c = load_experiment_config(cfg_path)
    assert c.selector_for("select:logprobs").mode == "logprobs"
    assert c.selector_for("select").mode == c.selector.mode
    root = tmp_path / "r"
    assert plan_dir_of(root, "select:logprobs", 8, 0).name == "b8-s0-select-logprobs"
    assert plan_dir_of(root, "random", 8, 0) == plan_dir_of(root, "select", 8, 0)


def test_pool_without_responses_is_refused(tmp_path: Path) -> None:
    rows = [
        json.loads(x)
        for x in (REPO / "examples" / "dolly_sample_1500.jsonl").read_text().splitlines()
    ]
    pool = tmp_path / "unlabelled.jsonl"
    pool.write_text(
        "".join(json.dumps({"instruction": r["instruction"]}) + "\n" for r in rows[:300])
    )
    cfg = tiny_experiment_config(
        tmp_path, (f'pool = "{REPO}/examples/dolly_sample_1500.jsonl"', f'pool = "{pool}"')
    )
    with pytest.raises(UserError, match=r"\[experiment\] pool .* 200 of 200 rows have no response"):
        load_inputs(load_experiment_config(cfg))


def test_cli_bad_config_exit_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from selectllm_local.cli import app

    cfg = tiny_experiment_config(tmp_path, (METHODS, 'methods = ["nope"]'))
    res = CliRunner().invoke(app, ["experiment", str(cfg), "--run-dir", str(tmp_path / "r")])
    assert res.exit_code == 2 and "unknown method 'nope'" in res.output


def test_tiny_ci_experiment_end_to_end(tmp_path: Path) -> None:
    out = run_experiment(TINY, run_dir=tmp_path, progress=False)
    assert out.cells_total == 16 and len(out.cells_run) == 16 and not out.cells_pending
    table = (tmp_path / "results.md").read_text()
    for m in ("select", "random", "kcenter", "cluster-random"):
        assert f"| {m} |" in table
    scores = table.split("## Scores per method")[1].split("### Overlap")[0]
    assert "16 of 16 cells done" in table and "–" not in scores
    assert "comparisons were made" in table and "### Against random (budget 16)" in table
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
    summary = (tmp_path / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 4 * 2 and summary[0].startswith("method,budget,seeds")
    for cell in out.cells_run:
        sel = json.loads((tmp_path / "cells" / cell / "selection.json").read_text())
        assert len(sel["indices"]) == sel["budget"] == len(set(sel["indices"]))
        assert (tmp_path / "cells" / cell / "finetune" / "adapter" / "adapter_config.json").exists()
    # select and cluster-random saw the same plan (one directory per budget and seed)
    plan_dir = tmp_path / "plans" / "b8-s0"
    assert (plan_dir / "subsets.jsonl").exists() and (plan_dir / "responses.jsonl").exists()
    again = run_experiment(TINY, run_dir=tmp_path, progress=False)
    assert not again.cells_run and len(again.cells_skipped) == 16


def _small(tmp_path: Path) -> Path:
    return tiny_experiment_config(
        tmp_path,
        (METHODS, 'methods = ["random", "length"]'),
        ("budgets = [8, 16]", "budgets = [8]"),
        ("limit = 8 ", "limit = 8\nnll_limit = 12 "),  # NLL on 12 rows, answers on 8
    )


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_max_cells_then_resume_runs_only_the_rest(tmp_path: Path) -> None:
    cfg = _small(tmp_path)
    first = run_experiment(cfg, run_dir=tmp_path / "r", max_cells=3, progress=False)
    assert len(first.cells_run) == 3 and len(first.cells_pending) == 1
    assert "3 of 4 cells done" in (tmp_path / "r" / "results.md").read_text()
    second = run_experiment(cfg, run_dir=tmp_path / "r", progress=False)
    assert second.cells_skipped == first.cells_run and second.cells_run == first.cells_pending
    # A cell whose stages finished in an earlier run reuses them and keeps their recorded times.
    cell = tmp_path / "r" / "cells" / first.cells_run[0]
    before = json.loads((cell / "done.json").read_text())
    adapter = cell / "finetune" / "adapter" / "adapter_config.json"
    mtime = adapter.stat().st_mtime_ns
    (cell / "done.json").unlink()
    third = run_experiment(cfg, run_dir=tmp_path / "r", progress=False)
    assert third.cells_run == [first.cells_run[0]]
    after = json.loads((cell / "done.json").read_text())
    assert after["reused"] == ["selection", "finetune", "evaluate", "reference_nll"]
    assert adapter.stat().st_mtime_ns == mtime
    train = json.loads((cell / "finetune" / "train_summary.json").read_text())
    scores = json.loads((cell / "eval" / "scores.json").read_text())
    sel = json.loads((cell / "selection.json").read_text())
    assert after["seconds"]["finetune"] == round(train["seconds"], 3) > 0
    assert after["seconds"]["evaluate"] == round(scores["seconds"], 3) > 0
    assert after["selection_seconds"] == before["selection_seconds"] == sel["seconds"] > 0
    assert after["seconds"]["selection"] == sel["seconds"]
    assert after["rougeL_f1"] == before["rougeL_f1"]
    assert after["reference_nll"] == before["reference_nll"] == scores["reference_nll"]

    # The file contract: answered rows are a subset of the NLL rows, the same in every cell.
    cells = [tmp_path / "r" / "cells" / c for c in first.cells_run + first.cells_pending]
    for c in cells:
        done = json.loads((c / "done.json").read_text())
        assert done["nll_rows"] == 12 and done["reference_nll"] > 0
        assert [p["row"] for p in _lines(c / "eval" / "predictions.jsonl")] == list(range(8))
        assert [r["row"] for r in _lines(c / "eval" / "reference_nll.jsonl")] == list(range(12))
    # Every seed draws its own selection; a deterministic method draws the same one.
    picks = {
        c.parent.name + "/" + c.name: json.loads((c / "selection.json").read_text())["indices"]
        for c in cells
    }
    assert picks["random/b8-s0"] != picks["random/b8-s1"]
    assert picks["length/b8-s0"] == picks["length/b8-s1"]

    # A cell evaluated before the NLL existed gains it on a re-run, and nothing else is redone.
    ev = cell / "eval"
    answers = _lines(ev / "predictions.jsonl")
    (ev / "reference_nll.jsonl").unlink()
    old = {k: v for k, v in scores.items() if k not in ("reference_nll", "nll_rows", "nll")}
    (ev / "scores.json").write_text(json.dumps(old))
    (ev / "predictions.jsonl").write_text(
        "".join(json.dumps({k: v for k, v in p.items() if k != "row"}) + "\n" for p in answers)
    )
    stale = {k: v for k, v in after.items() if k not in ("nll_key", "reference_nll", "nll_rows")}
    (cell / "done.json").write_text(json.dumps(stale))
    # stopped before redoing it (--max-cells), the tables leave out its NLL-less, stale results
    held = run_experiment(cfg, run_dir=tmp_path / "r", max_cells=0, progress=False)
    assert held.cells_pending == [first.cells_run[0]] and len(held.cells_skipped) == 3
    md = (tmp_path / "r" / "results.md").read_text()
    assert md.startswith("# Results: 3 of 4 cells done") and "older config" in md
    assert first.cells_run[0] in md.split("older config")[1]
    fourth = run_experiment(cfg, run_dir=tmp_path / "r", progress=False)
    assert fourth.cells_run == [first.cells_run[0]] and len(fourth.cells_skipped) == 3
    upgraded = json.loads((cell / "done.json").read_text())
    assert upgraded["reused"] == ["selection", "finetune", "evaluate"]
    assert upgraded["reference_nll"] == pytest.approx(before["reference_nll"], rel=1e-6)
    assert _lines(ev / "predictions.jsonl") == answers and adapter.stat().st_mtime_ns == mtime


def test_killed_experiment_redoes_only_unfinished_cells(tmp_path: Path) -> None:
    cfg = _small(tmp_path)
    run = tmp_path / "r"
    # The run holds after its first finished cell (testhooks) until the kill.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "SELECTLLM_HOLD_AFTER_CELLS": "1"}  # fmt: skip
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "selectllm_local.cli",
            "experiment",
            str(cfg),
            "--run-dir",
            str(run),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # Wait for the first finished cell however slow the machine is (the deadline only guards
    # against a hang); the run then holds, so no second cell can finish before the kill.
    deadline = time.monotonic() + HANG_GUARD
    try:
        while not list(run.glob("cells/*/*/done.json")):
            assert proc.poll() is None, "the experiment exited before finishing a cell"
            assert time.monotonic() < deadline, "no cell finished in 30 minutes"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_at_kill = sorted(
        str(p.parent.relative_to(run / "cells")) for p in run.glob("cells/*/*/done.json")
    )
    assert 1 <= len(done_at_kill) < 4, "kill the run while cells remain"
    assert len(done_at_kill) == 1  # held after the first cell
    out = run_experiment(cfg, run_dir=run, progress=False)
    assert sorted(out.cells_skipped) == done_at_kill
    assert len(out.cells_run) == 4 - len(done_at_kill)
    assert "4 of 4 cells done" in (run / "results.md").read_text()


def test_shipped_paper_config_has_only_known_keys(tmp_path: Path) -> None:
    text = (REPO / "configs" / "paper_dolly.toml").read_text()
    for path in ("../models/Llama-2-7b-hf", "../models/Qwen2.5-7B-Instruct"):
        text = text.replace(f'"{path}"', '"tiny:tiny-llama"')
    text = text.replace('"../data/', f'"{REPO}/data/')  # the shipped Dolly 15k
    text = text.replace('"../examples', f'"{REPO}/examples').replace(
        "[1000, 2000, 3000]", "[100, 200]"
    )
    p = tmp_path / "paper.toml"
    p.write_text(text)
    cfg = load_experiment_config(p)
    assert len(cfg.methods) == 7 and cfg.seeds == [0, 1, 2] and cfg.finetune.lora_r == 64
    assert cfg.plan["n_clusters"] == 14 and cfg.finetune.quantization == "nf4"
    assert cfg.engine.backend == "vllm" and cfg.engine.gpu_memory_utilization == 0.85
    assert cfg.baseline.scorer_batch_size == 32
    # the paper's values (issue 8): validation split + early stopping, q/v LoRA, 4,096 tokens,
    # 150 new tokens, a 1,000-item diversity sample, perplexity of the base model's answer
    ft = cfg.finetune
    assert (ft.epochs, ft.val_fraction, ft.early_stopping_patience) == (20.0, 0.2, 3)
    assert ft.early_stopping_threshold == 0.01  # the official code's EarlyStoppingCallback
    assert ft.target_modules == ["q_proj", "v_proj"] and ft.max_length == 4096
    assert cfg.evaluate.max_new_tokens == 150
    assert baseline_options(cfg.baseline, "diversity") == {"sample_size": 1000}
    assert "answer-perplexity" in cfg.methods and "perplexity" not in cfg.methods


def test_selection_seed_follows_the_cell_seed_unless_overridden(tmp_path: Path) -> None:
    from selectllm_local.experiment.cells import Cell, plan_dir_of
    from selectllm_local.experiment.keys import _selection_key, selection_seed

    pool = tmp_path / "pool.jsonl"
    pool.write_text("{}\n")
    per_seed = load_experiment_config(tiny_experiment_config(tmp_path))
    shared = load_experiment_config(
        tiny_experiment_config(
            tmp_path, ("pool_limit = 200 ", "pool_limit = 200\nselection_seed = 0 "), name="s.toml"
        )
    )
    s0, s1 = Cell("cluster-random", 8, 0), Cell("cluster-random", 8, 1)
    assert [selection_seed(per_seed, c) for c in (s0, s1)] == [0, 1]
    assert [selection_seed(shared, c) for c in (s0, s1)] == [0, 0]
    assert _selection_key(per_seed, s0, pool) != _selection_key(per_seed, s1, pool)
    assert _selection_key(shared, s0, pool) == _selection_key(shared, s1, pool)
    assert _selection_key(per_seed, s0, pool) == _selection_key(shared, s0, pool)
    root = tmp_path / "r"
    assert plan_dir_of(root, "select", 8, 1) != plan_dir_of(root, "select", 8, 0)


def test_selection_clock_sums_resumes_and_keeps_a_finished_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selectllm_local.experiment import clock
    from selectllm_local.experiment.clock import SelectionClock

    ticks = itertools.count(0.0, 7.0)  # a clock that moves 7 s per reading: no real timing
    monkeypatch.setattr(clock.time, "perf_counter", lambda: next(ticks))

    with pytest.raises(KeyboardInterrupt), SelectionClock(tmp_path, "select", "k1") as c:
        raise KeyboardInterrupt  # a stopped selection keeps the time it spent
    interrupted = c.seconds
    assert not c.was_complete and interrupted > 0
    with SelectionClock(tmp_path, "select", "k1") as c:
        pass
    assert not c.was_complete and c.seconds > interrupted  # the resumed stretch is added
    finished = c.seconds
    with SelectionClock(tmp_path, "select", "k1") as c:  # found finished: its time, unchanged
        pass
    assert c.was_complete and c.seconds == finished
    with SelectionClock(tmp_path, "random", "k1") as other:  # methods are counted apart
        pass
    assert not other.was_complete
    with SelectionClock(tmp_path, "select", "k2") as c:  # another selection: from zero
        pass
    assert not c.was_complete and c.seconds < finished
    ledger = json.loads((tmp_path / "selection_seconds.json").read_text())
    assert ledger["select"]["key"] == "k2" and ledger["random"]["complete"] is True
