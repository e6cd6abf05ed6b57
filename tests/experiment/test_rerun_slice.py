"""A 2-seed, tiny-model slice of the shipped re-run (``experiments/smollm2_dolly.toml``) in CI.

The long run is not part of CI; this slice is (issue 18). It reads the shipped file as it is and
changes only what must shrink: the models (random-weight tiny ones, on the backends the file
names), the seeds, the samples, the budget, the fine-tune's steps and the answers' length. Every
other key (methods, method_seeds, exclude_test_from_pool, the selector, the [engine] backend and
dtype, finetune_subprocess, the LoRA recipe, ...) is the shipped one, so a change to the shipped
file is run by CI. If the file's shape changes (a key the slice overrides is gone), the test fails
and says which key.
"""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from selectllm_local.data.splits import TestOverlap
from selectllm_local.experiment import load_experiment_config
from selectllm_local.experiment.cells import Cell
from selectllm_local.experiment.config import ExperimentConfig
from selectllm_local.experiment.inputs import load_inputs
from tests.helpers import REPO, toml_text

SHIPPED = REPO / "experiments" / "smollm2_dolly.toml"
SEEDS = [0, 1]
POOL, BUDGET = 60, 12  # the shipped pool/budget ratio (1,000 / 200), so K = 5 and one round too
# (table, key) -> the slice's value. Each key must be in the shipped file.
REPLACE: dict[tuple[str, str], Any] = {
    ("experiment", "base_model"): "tiny:tiny-llama",
    ("experiment", "seeds"): SEEDS,
    ("experiment", "pool_sample"): POOL,
    ("experiment", "budgets"): [BUDGET],
    ("experiment", "test_sample"): 4,
    ("experiment", "nll_sample"): 8,
    ("engine", "model"): "tiny:tiny-qwen2",  # on the shipped [engine] backend (vllm)
    ("evaluate", "max_new_tokens"): 8,
}
# Keys the shipped file leaves at their default and the slice sets; each must be absent there.
ADD: dict[tuple[str, str], Any] = {
    ("finetune", "max_steps"): 2,  # beside the shipped epochs: 2 steps, whatever the budget
}
PATHS = (("experiment", "pool"), ("experiment", "test_set"))  # relative to experiments/


def slice_of(shipped: dict[str, Any]) -> dict[str, Any]:
    """The shipped experiment with only the overridden keys changed and its paths made absolute."""
    cfg = copy.deepcopy(shipped)
    for (table, key), v in REPLACE.items():
        assert key in cfg.get(table, {}), f"{SHIPPED.name} has no [{table}] {key}: update the slice"
        cfg[table][key] = v
    for (table, key), v in ADD.items():
        assert key not in cfg.get(table, {}), f"{SHIPPED.name} now sets [{table}] {key}"
        cfg.setdefault(table, {})[key] = v
    exp = cfg["experiment"]
    exp["method_seeds"] = {
        m: [s for s in seeds if s in SEEDS][:2] for m, seeds in exp.get("method_seeds", {}).items()
    }
    for table, key in PATHS:
        path = (SHIPPED.parent / cfg[table][key]).resolve()
        assert path.exists(), f"[{table}] {key} = {cfg[table][key]!r}: {path} is missing"
        cfg[table][key] = str(path)
    return cfg


def _write_slice(tmp_path: Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    shipped = tomllib.loads(SHIPPED.read_text("utf-8"))
    derived = slice_of(shipped)
    text = toml_text(derived)
    assert tomllib.loads(text) == derived  # the writer round-trips
    path = tmp_path / "slice.toml"
    path.write_text(text, "utf-8")
    return path, shipped, derived


def test_the_slice_keeps_every_shipped_key_it_does_not_shrink(tmp_path: Path) -> None:
    path, shipped, derived = _write_slice(tmp_path)
    changed = {*REPLACE, *ADD, *PATHS, ("experiment", "method_seeds")}
    for table, keys in shipped.items():
        for key, v in keys.items():
            if (table, key) not in changed:
                assert derived[table][key] == v, f"[{table}] {key}"
    cfg = load_experiment_config(path, run_dir=tmp_path / "run")
    assert cfg.methods == shipped["experiment"]["methods"] and cfg.engine.backend == "vllm"
    assert cfg.experiment.finetune_subprocess == shipped["experiment"]["finetune_subprocess"]
    assert cfg.selector.permutations == shipped["selector"]["permutations"]
    assert all(cfg.seeds_of(m) and set(cfg.seeds_of(m)) <= set(SEEDS) for m in cfg.methods)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_rerun_slice_end_to_end(tmp_path: Path) -> None:
    path, _, _ = _write_slice(tmp_path)
    run = tmp_path / "run"
    cfg = load_experiment_config(path, run_dir=run)
    cells = [Cell(m, BUDGET, s).name for m in cfg.methods for s in cfg.seeds_of(m)]
    assert len(cells) == sum(len(cfg.seeds_of(m)) for m in cfg.methods)

    out = _run_cli(path, run)  # as a user runs it, and vLLM's process state stays out of pytest's
    assert out["cells_total"] == len(cells) and sorted(out["cells_run"]) == sorted(cells)
    assert not out["cells_pending"]
    check_slice_run(cfg, run, cells)
    again = _run_cli(path, run)
    assert not again["cells_run"] and sorted(again["cells_skipped"]) == sorted(cells)


def _run_cli(path: Path, run: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "selectllm_local", "experiment", str(path), "--run-dir", str(run)]
    res = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


def check_slice_run(cfg: ExperimentConfig, run: Path, cells: list[str]) -> None:
    """What a finished slice must hold: leak-free selections of the budget, and results with
    paired verdicts and minimum detectable effects for every method against random."""
    # Every selection: exactly the budget of distinct pool rows, none of them a test example.
    data = load_inputs(cfg)
    assert len(data.pool_items) == POOL and data.test_overlap > 0
    pool_file = (run / "data" / "pool.jsonl").read_text("utf-8").splitlines()
    assert [it.raw for it in data.pool_items] == [json.loads(x) for x in pool_file]
    leak = TestOverlap(data.all_test_examples)  # the leak rule: pair, prompt or passage + answer
    for cell in cells:
        assert (run / "cells" / cell / "done.json").exists(), cell
        sel = json.loads((run / "cells" / cell / "selection.json").read_text())
        picked = sel["indices"]
        assert sel["budget"] == BUDGET == len(picked) == len(set(picked)), cell
        assert all(0 <= i < POOL for i in picked), cell
        rows = [data.pool_items[i] for i in picked]
        assert not [r.index for r in rows if leak(r.instruction, r.input, r.output)], cell
    assert not [it.index for it in data.pool_items if leak(it.instruction, it.input, it.output)]
    assert leak.total == 0

    # results: all cells, the paired comparisons with verdicts, the MDE of each method vs random
    table = (run / "results.md").read_text("utf-8")
    assert f"{len(cells)} of {len(cells)} cells done" in table
    assert "comparisons were made" in table and "Verdicts:" in table
    against = table.split(f"### Against random (budget {BUDGET})")[1].split("###")[0]
    mde = table.split("### Minimum detectable effect")[1]
    assert f"| {BUDGET} | random |" in mde
    comparisons = [r for r in _rows(run / "results.csv") if r["reference"] == "random"]
    verdicts = {"better", "worse", "no detectable difference"}
    for m in cfg.methods:
        if m == "random":
            continue
        assert f"| {m} |" in against, m
        mine = [r for r in comparisons if r["method"] == m]
        assert {r["metric"] for r in mine} == {"rougeL_f1", "cosine", "reference_nll"}, m
        # (tiny random models may answer two methods' rows alike: a zero MDE is possible)
        assert all(r["verdict"] in verdicts and float(r["mde"]) >= 0 for r in mine), m
