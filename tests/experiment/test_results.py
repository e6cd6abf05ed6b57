"""results.md / results.csv verdicts and ``selectllm compare`` of experiment cells, on cell folders
built here with constructed per-row scores (pure logic: no model is needed to read scores)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from selectllm_local.cli import app
from selectllm_local.experiment.results import write_results
from selectllm_local.experiment.stats import BETTER, NO_DIFFERENCE, WORSE

ROWS = 60
METHODS = ["llm", "cluster-random", "random"]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")


def make_cell(
    root: Path,
    method: str,
    seed: int,
    scores: dict[str, np.ndarray],
    *,
    budget: int = 8,
    nested: bool = True,
    row_field: bool = True,
    selection_seconds: float | None = None,
    prompts: list[str] | None = None,
) -> Path:
    """A finished cell: done.json, selection.json and per-row files (in eval/ when ``nested``)."""
    cell = root / "cells" / method.replace(":", "-") / f"b{budget}-s{seed}"
    ev = cell / "eval" if nested else cell
    prompts = prompts or [f"question {i}" for i in range(ROWS)]
    preds = []
    for i in range(ROWS):
        r = {"instruction": prompts[i], "input": "", "reference": f"answer {i}", "prediction": "x",
             "rougeL_f1": float(scores["rougeL_f1"][i]), "cosine": float(scores["cosine"][i])}  # fmt: skip
        preds.append({"row": i, **r} if row_field else r)
    _write_jsonl(ev / "predictions.jsonl", preds)
    if "reference_nll" in scores:
        nll = [
            {"row": i, "nll": float(v), "tokens": 20} for i, v in enumerate(scores["reference_nll"])
        ]
        _write_jsonl(ev / "reference_nll.jsonl", nll)
    done = {"method": method, "budget": budget, "seed": seed, "n_test": ROWS,
            "rougeL_f1": float(np.mean(scores["rougeL_f1"])), "cosine": float(np.mean(scores["cosine"])),
            "seconds": {"selection": 0.1, "finetune": 100.0, "evaluate": 50.0, "reference_nll": 20.0}}  # fmt: skip
    if selection_seconds is not None:
        done["selection_seconds"] = selection_seconds
    (cell / "done.json").write_text(json.dumps(done), "utf-8")
    (cell / "selection.json").write_text(json.dumps({"indices": list(range(seed, seed + 8))}))
    return cell


def experiment(root: Path, *, nll: bool = True, **kw: object) -> None:
    """random; cluster-random = random +-0.01 alternating (mean difference exactly 0, a tie);
    llm = random + 0.1 on Rouge-L (a win), - 0.1 on cosine (a loss), - 0.3 NLL (lower: a win)."""
    rng = np.random.default_rng(0)
    alt = np.where(np.arange(ROWS) % 2 == 0, 0.01, -0.01)
    for seed in (0, 1):
        base = {"rougeL_f1": 0.2 + 0.05 * rng.standard_normal(ROWS),
                "cosine": 0.5 + 0.05 * rng.standard_normal(ROWS),
                "reference_nll": 2.5 + 0.2 * rng.standard_normal(ROWS)}  # fmt: skip
        if not nll:
            del base["reference_nll"]
        noise = 0.01 * rng.standard_normal(ROWS)
        shift = {"rougeL_f1": 0.1, "cosine": -0.1, "reference_nll": -0.3}
        llm = {k: v + shift[k] + noise for k, v in base.items()}
        tie = {k: v + alt for k, v in base.items()}
        make_cell(root, "random", seed, base, **kw)  # type: ignore[arg-type]
        make_cell(root, "cluster-random", seed, tie, **kw)  # type: ignore[arg-type]
        make_cell(root, "llm", seed, llm, selection_seconds=3600.0 if seed == 0 else 3000.0)


def _write(root: Path) -> list[dict[str, str]]:
    cells = [f"{m}/b8-s{s}" for m in METHODS for s in (0, 1)]
    write_results(root, METHODS, [8], [0, 1], cells=cells)
    with open(root / "results.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_results_give_verdicts_in_each_metrics_direction(tmp_path: Path) -> None:
    experiment(tmp_path)
    rows = _write(tmp_path)
    got = {(r["method"], r["reference"], r["metric"]): r for r in rows}
    # llm vs random, llm vs cluster-random, cluster-random vs random (once), x 3 metrics
    assert len(rows) == 9 and ("random", "cluster-random", "cosine") not in got
    for ref in ("random", "cluster-random"):
        assert got[("llm", ref, "rougeL_f1")]["verdict"] == BETTER
        assert got[("llm", ref, "cosine")]["verdict"] == WORSE
        assert got[("llm", ref, "reference_nll")]["verdict"] == BETTER  # lower NLL
        assert float(got[("llm", ref, "reference_nll")]["difference"]) < 0
    for metric in ("rougeL_f1", "cosine", "reference_nll"):
        tie = got[("cluster-random", "random", metric)]
        assert tie["verdict"] == NO_DIFFERENCE and tie["survives_holm"] == "False"
        assert float(tie["low"]) < 0 < float(tie["high"])
    clear = [r for r in rows if r["method"] == "llm"]
    assert all(r["survives_holm"] == "True" and float(r["holm_p"]) <= 0.05 for r in clear)
    win = got[("llm", "random", "rougeL_f1")]
    assert float(win["difference"]) == pytest.approx(0.1, abs=0.005)
    assert (win["seeds"], win["rows"]) == ("2", str(ROWS))

    md = (tmp_path / "results.md").read_text("utf-8")
    assert "9 comparisons were made: 3 method–reference pairs" in md
    assert "Verdicts: 4 better, 2 worse, 3 no detectable difference" in md
    assert "6 of the 6 better/worse verdicts hold after the Holm correction" in md
    assert (
        "| llm | Reference NLL (nats/token) | -0.3" in md and "### Minimum detectable effect" in md
    )
    assert "lower is better" in md
    # selection time: recorded for llm (mean of 3600 and 3000), unknown ("–", never 0) elsewhere
    assert "| llm | 3300 | 100 | 50 | 20 | 3470 |" in md
    assert "| random | – | 100 | 50 | 20 | ≥ 170 |" in md
    cells_csv = (tmp_path / "cells.csv").read_text("utf-8").splitlines()
    assert len(cells_csv) == 1 + 6 and "selection_seconds" in cells_csv[0]


def test_results_without_per_row_nll_or_row_field_still_compare(tmp_path: Path) -> None:
    """Today's layout: predictions.jsonl beside done.json, no "row" field, no NLL file."""
    experiment(tmp_path, nll=False, nested=False, row_field=False)
    rows = _write(tmp_path)
    assert {r["metric"] for r in rows} == {"rougeL_f1", "cosine"} and len(rows) == 6
    md = (tmp_path / "results.md").read_text("utf-8")
    assert "Reference NLL (nats/token): no per-row scores in these cells" in md


def test_results_of_a_half_done_run_compare_the_seeds_there_are(tmp_path: Path) -> None:
    experiment(tmp_path)
    (tmp_path / "cells" / "random" / "b8-s1" / "done.json").unlink()
    done = tmp_path / "cells" / "llm" / "b8-s1" / "done.json"
    d = json.loads(done.read_text("utf-8"))
    del d["selection_seconds"]
    done.write_text(json.dumps(d), "utf-8")
    rows = _write(tmp_path)
    assert (
        "| llm | 3600 (1 of 2 cells) | 100 | 50 | 20 | 3770 |"
        in (tmp_path / "results.md").read_text()
    )
    got = {(r["method"], r["reference"], r["metric"]): r for r in rows}
    assert got[("llm", "random", "rougeL_f1")]["seeds"] == "1"
    assert got[("llm", "cluster-random", "rougeL_f1")]["seeds"] == "2"
    assert "5 of 6 cells done" in (tmp_path / "results.md").read_text("utf-8")
    assert "(1/2 seeds)" in (tmp_path / "results.md").read_text("utf-8")


def test_a_method_planned_with_fewer_seeds_is_labelled_so_not_as_missing(tmp_path: Path) -> None:
    experiment(tmp_path)
    rng = np.random.default_rng(1)
    make_cell(
        tmp_path, "select:logprobs", 0, {"rougeL_f1": rng.random(ROWS), "cosine": rng.random(ROWS)}
    )
    cells = [f"{m}/b8-s{s}" for m in METHODS for s in (0, 1) if (m, s) != ("llm", 1)]
    methods = [*METHODS, "select:logprobs"]  # a mode's cells live in select-logprobs/
    write_results(tmp_path, methods, [8], [0, 1], cells=[*cells, "select-logprobs/b8-s0"])
    text = (tmp_path / "results.md").read_text("utf-8")
    assert "# Results: 6 of 6 cells done" in text
    tables = text.count("(mean ± std over seeds")
    assert tables >= 2
    for m in ("llm", "select:logprobs"):  # run with seed 0 only: complete, one seed
        rows = [line for line in text.splitlines() if line.startswith(f"| {m} | 0.")]
        assert len(rows) == tables and all(r.endswith("(1 seed) |") for r in rows), rows
    assert "/2 seeds)" not in text


def test_compare_two_cells_prints_the_paired_numbers(tmp_path: Path) -> None:
    experiment(tmp_path)
    c = tmp_path / "cells"
    r = CliRunner().invoke(app, ["compare", str(c / "llm" / "b8-s0"), str(c / "random" / "b8-s0")])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "Rouge-L F1" in out and "better" in out and "worse" in out
    assert "interval holds the test-row noise only" in out
    j = CliRunner().invoke(
        app, ["compare", str(c / "llm" / "b8-s0"), str(c / "random" / "b8-s0"), "--json"]
    )
    doc = json.loads(j.stdout)
    verdicts = {p["metric"]: p["verdict"] for p in doc["paired"]}
    assert verdicts == {"rougeL_f1": BETTER, "cosine": WORSE, "reference_nll": BETTER}
    assert doc["overlap"] is None  # no pool.key.json in this constructed run


def test_compare_method_folders_gives_the_numbers_of_results_csv(tmp_path: Path) -> None:
    experiment(tmp_path)
    rows = _write(tmp_path)
    c = tmp_path / "cells"
    r = CliRunner().invoke(app, ["compare", str(c / "llm"), str(c / "cluster-random"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    for p in doc["paired"]:
        row = next(x for x in rows if (x["method"], x["reference"], x["metric"])
                   == ("llm", "cluster-random", p["metric"]))  # fmt: skip
        assert p["seeds"] == 2 and p["verdict"] == row["verdict"]
        for k in ("difference", "low", "high", "p_value", "mde"):
            assert p[k] == pytest.approx(float(row[k]), rel=1e-9)


def test_compare_refuses_cells_of_different_test_rows_and_unfinished_cells(tmp_path: Path) -> None:
    experiment(tmp_path)
    rng = np.random.default_rng(1)
    s = {"rougeL_f1": rng.random(ROWS), "cosine": rng.random(ROWS)}
    other = make_cell(tmp_path / "other", "random", 0, s, prompts=[f"q{i}" for i in range(ROWS)])
    cell = tmp_path / "cells" / "llm" / "b8-s0"
    r = CliRunner().invoke(app, ["compare", str(cell), str(other)])
    assert r.exit_code == 2 and "different test rows" in " ".join(r.output.split())
    (tmp_path / "cells" / "random" / "b8-s0" / "done.json").unlink()
    r = CliRunner().invoke(
        app, ["compare", str(cell), str(tmp_path / "cells" / "random" / "b8-s0")]
    )
    assert r.exit_code == 2 and "has not finished" in " ".join(r.output.split())


def test_a_malformed_score_line_names_file_and_line(tmp_path: Path) -> None:
    experiment(tmp_path)
    preds = tmp_path / "cells" / "random" / "b8-s0" / "eval" / "predictions.jsonl"
    lines = preds.read_text("utf-8").splitlines()
    lines[2] = json.dumps({"row": 2, "rougeL_f1": "high", "cosine": 0.5})
    preds.write_text("\n".join(lines) + "\n", "utf-8")
    cell = tmp_path / "cells" / "llm" / "b8-s0"
    r = CliRunner().invoke(app, ["compare", str(cell), str(preds.parent.parent)])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "predictions.jsonl line 3: field 'rougeL_f1'" in out


def test_a_run_without_a_reference_says_so(tmp_path: Path) -> None:
    experiment(tmp_path)
    write_results(tmp_path, ["llm"], [8], [0, 1], cells=["llm/b8-s0", "llm/b8-s1"])
    md = (tmp_path / "results.md").read_text("utf-8")
    assert "No comparison could be made." in md and "neither random nor cluster-random" in md
    assert (tmp_path / "results.csv").read_text("utf-8") == ""


def test_a_reference_mean_of_zero_has_no_relative_difference(tmp_path: Path) -> None:
    zero = {"rougeL_f1": np.zeros(ROWS), "cosine": np.zeros(ROWS)}
    some = {"rougeL_f1": np.full(ROWS, 0.1), "cosine": np.zeros(ROWS)}
    for seed in (0, 1):
        make_cell(tmp_path, "random", seed, zero)
        make_cell(tmp_path, "llm", seed, some)
    cells = [f"{m}/b8-s{s}" for m in ("llm", "random") for s in (0, 1)]
    write_results(tmp_path, ["llm", "random"], [8], [0, 1], cells=cells)
    md = (tmp_path / "results.md").read_text("utf-8")
    assert "| llm | Rouge-L F1 | +0.1000 | [+0.1000, +0.1000] | – | better |" in md
    assert "–%" not in md


def test_a_cell_made_under_another_config_is_left_out_and_named(tmp_path: Path) -> None:
    """A stale done.json (not finished under the current config by the runner's rule: a config
    change, then a run stopped by --max-cells before redoing that cell) must not feed the
    comparisons, the score tables or the overlap of the selections."""
    experiment(tmp_path)
    cells = [f"{m}/b8-s{s}" for m in METHODS for s in (0, 1)]
    stale = tmp_path / "cells" / "llm" / "b8-s1" / "selection.json"
    stale.write_text(json.dumps({"indices": list(range(40, 48))}))  # picks no other cell has
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pool.key.json").write_text(json.dumps({"rows": 60}))  # the overlap's N
    finished = [c for c in cells if c != "llm/b8-s1"]
    write_results(tmp_path, METHODS, [8], [0, 1], cells=cells, finished=finished)
    with open(tmp_path / "results.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    llm = [r for r in rows if r["method"] == "llm"]
    assert llm and all(r["seeds"] == "1" for r in llm)  # only seed 0 is paired
    assert all(r["seeds"] == "2" for r in rows if r["method"] == "cluster-random")
    md = (tmp_path / "results.md").read_text()
    assert "older config" in md and "llm/b8-s1" in md
    assert md.startswith("# Results: 5 of 6 cells done")
    seed1 = md.split("selection seed 1")[1].split("###")[0]
    assert "| cluster-random | random |" in seed1 and "llm" not in seed1
    with open(tmp_path / "cells.csv", encoding="utf-8") as fh:
        assert len(list(csv.DictReader(fh))) == 5
    # without the runner's verdict (an exported folder re-rendered) every finished cell counts
    write_results(tmp_path, METHODS, [8], [0, 1], cells=cells)
    with open(tmp_path / "results.csv", encoding="utf-8") as fh:
        assert all(r["seeds"] == "2" for r in csv.DictReader(fh))
