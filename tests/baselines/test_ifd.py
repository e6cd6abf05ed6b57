"""The likelihood selectors ``ifd`` and ``cluster-ifd`` (Superfiltering's IFD, ``likelihood.py``).

The scores are checked against our own plain transformers computation (one unpadded forward pass
per text, the full logits, no engine) on 20 Dolly rows with the real SmolLM2-135M-Instruct, on
both engines; the selectors through the CLI on a held-out Dolly sample, on both engines; the
cache's resume after a torn line with a real (tiny) model; the ordering and the plan's rounds on
constructed scores (pure logic).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import EXAMPLE_POOL, HANG_GUARD, REPO, requires_vllm, small_pool

ROWS = 20  # rows compared with the reference
REL = 1e-3  # the tolerance on IFD
SHORT = 320  # tokens per reference text: keeps the full-logits reference cheap on a loaded CPU
ROWS_CLI = 30  # held-out Dolly rows the CLI tests select from


def dolly_items(n: int, skip: int = 0) -> list:
    from selectllm_local.data.pool import load_pool

    items, _ = load_pool(EXAMPLE_POOL)
    return [it for it in items if it.output][skip : skip + n]


# -- pure logic ---------------------------------------------------------------------------------


def test_ifd_pick_drops_ifd_at_least_one_and_takes_the_highest() -> None:
    from selectllm_local.baselines.ifd import ifd_pick

    ifd = np.array([0.5, 1.2, 0.9, np.nan, 0.7, 1.0, 0.2, 3.0])
    rng = np.random.default_rng(0)
    assert ifd_pick(ifd, 3, rng).tolist() == [2, 4, 0]
    # more than pass the filter: then IFD >= 1 closest to 1 first, unscored rows last
    assert ifd_pick(ifd, 8, rng).tolist() == [2, 4, 0, 6, 5, 1, 7, 3]


@pytest.mark.parametrize(("n", "budget", "k"), [(120, 30, 8), (120, 7, 8), (97, 13, 5)])
def test_cluster_pick_is_select_with_ifd_as_judge(n: int, budget: int, k: int) -> None:
    """Exact budget and distinct picks in one round (budget >= subsets) and in a tournament
    (budget < subsets); in one round each subset keeps exactly its k best candidates."""
    from selectllm_local.baselines.ifd import cluster_pick, preference
    from selectllm_local.cluster.subsets import make_plan

    rng = np.random.default_rng(n + budget)
    labels = np.arange(n) % k
    ifd = rng.uniform(0.3, 1.3, n)
    ifd[rng.choice(n, 5, replace=False)] = np.nan
    plan = make_plan(labels, budget, seed=1)
    picks = cluster_pick(plan, ifd, np.random.default_rng(0), seed=1)
    assert len(picks) == budget == len(set(picks))
    pref = preference(ifd)
    if plan.rounds_expected == 1:
        for s in plan.subsets:
            mine = [p for p in picks if p in s.candidates]
            best = sorted(s.candidates, key=lambda c: -pref[c])[: s.k]
            assert sorted(mine) == sorted(best)
    else:  # a tournament: the winner of the whole pool survives every round
        assert int(np.argmax(pref)) in picks


def test_windows_cut_to_max_length_and_score_the_same_response(smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    from selectllm_local.baselines.ifd import ifd_windows

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    long_prompt, long_answer = "word " * 400, "answer " * 400
    for prompt, response in [("Short?\n", long_answer), (long_prompt, long_answer)]:
        w = ifd_windows(tok, prompt, response, 128)
        assert w is not None and len(w.cond) <= 128 and len(w.alone) <= 128
        resp = w.cond[w.cond_start :]
        assert w.alone[-len(resp) :] == resp and len(resp) >= 64  # at least half the window
    w = ifd_windows(tok, "Q?\n", "Fine.", 128)  # fits: untouched, no BOS for SmolLM2
    assert w is not None and w.alone_start == 1
    assert tok.decode(w.cond) == "Q?\nFine." and tok.decode(w.alone) == "Fine."


# -- agreement with a direct transformers computation (real SmolLM2) ------------------------------


@pytest.fixture(scope="module")
def reference(smollm2_dir: Path) -> tuple[list, np.ndarray]:
    """Our own IFD: each text alone through ``model(ids)`` (no padding, no engine), full logits,
    mean NLL over the response tokens; rows of at most SHORT tokens (nothing is cut)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()

    def mean_nll(ids: list[int], start: int) -> float:
        with torch.inference_mode():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        pos = torch.arange(start - 1, len(ids) - 1)
        return -float(logp[pos, torch.tensor(ids[start:])].mean())

    items, ifd = [], []
    for it in dolly_items(200):
        prompt = f"{it.instruction}\n{it.input}\n" if it.input else f"{it.instruction}\n"
        p, r = tok.encode(prompt), tok.encode(it.output)
        if len(p) + len(r) > SHORT or len(r) < 2:
            continue
        items.append(it)
        ifd.append(math.exp(mean_nll(p + r, len(p)) - mean_nll(r, 1)))
        if len(items) == ROWS:
            break
    return items, np.array(ifd)


def _engine_ifd(backend, items: list, tmp_path: Path) -> np.ndarray:  # noqa: ANN001
    from selectllm_local.baselines.ifd import ifd_scores

    out = ifd_scores(items, backend, key="k", cache_path=tmp_path / "s.jsonl", progress=False)
    assert out.scored_now == len(items)
    return out.ifd


@requires_vllm
def test_vllm_ifd_matches_a_direct_forward_pass(reference, smollm2_vllm, tmp_path: Path) -> None:  # noqa: ANN001
    items, ref = reference
    got = _engine_ifd(smollm2_vllm, items, tmp_path)
    np.testing.assert_allclose(got, ref, rtol=REL)
    assert np.ptp(ref) > 0.1  # the rows differ: a constant would not pass


def test_transformers_ifd_matches_a_direct_forward_pass(
    reference, smollm2_dir: Path, tmp_path: Path
) -> None:  # noqa: ANN001
    from selectllm_local.backends import load_backend
    from selectllm_local.config import EngineConfig

    items, ref = reference
    # batch 8: rows of different lengths share a padded batch
    backend = load_backend(
        "transformers", str(smollm2_dir), EngineConfig(dtype="float32", batch_size=8)
    )
    try:
        got = _engine_ifd(backend, items, tmp_path)
    finally:
        backend.close()
    np.testing.assert_allclose(got, ref, rtol=REL)
    assert (ref < 1).sum() >= ROWS // 2  # most answers are helped by their instruction


# -- the score file: resumable, keyed by model and text ---------------------------------------------


class Counting:
    """A real backend that counts the texts it is asked to score."""

    def __init__(self, backend) -> None:  # noqa: ANN001
        self.backend, self.texts = backend, 0

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.backend, name)

    def token_logprobs(self, sequences, starts, **kw):  # noqa: ANN001, ANN003, ANN201
        self.texts += len(sequences)
        return self.backend.token_logprobs(sequences, starts, **kw)


def test_scores_resume_after_a_torn_line(hf_backend, tmp_path: Path) -> None:  # noqa: ANN001
    from selectllm_local.baselines.ifd import ifd_scores

    items = dolly_items(12)
    cache = tmp_path / "ifd_scores.jsonl"
    first = ifd_scores(
        items, Counting(hf_backend), key="m1", cache_path=cache, chunk_rows=5, progress=False
    )
    assert first.scored_now == 12 and np.isfinite(first.ifd).all()
    lines = cache.read_text("utf-8").splitlines(keepends=True)
    assert len(lines) == 12
    cache.write_text("".join(lines[:9]) + lines[9][:20], "utf-8")  # killed while writing row 10
    spy = Counting(hf_backend)
    again = ifd_scores(items, spy, key="m1", cache_path=cache, chunk_rows=5, progress=False)
    assert again.cached == 9 and again.scored_now == 3 and spy.texts == 6  # two texts a row
    # the nine kept rows are read back bit for bit; the three scored again sat in another padded
    # batch, so they may move by float32 batch drift (docs/DIAGNOSTICS.md: up to ~1e-5; 2.3e-6
    # seen on one CPU), far below the IFD tolerance REL
    np.testing.assert_array_equal(again.ifd[:9], first.ifd[:9])
    np.testing.assert_allclose(again.ifd[9:], first.ifd[9:], rtol=1e-4)
    rows = [json.loads(x) for x in cache.read_text("utf-8").splitlines()]  # every line whole
    assert len(rows) == 12
    other = Counting(hf_backend)  # another model key: nothing is reused
    ifd_scores(items[:2], other, key="m2", cache_path=cache, progress=False)
    assert other.texts == 4


# -- the CLI: exact budget on both engines, exit 2 without responses -----------------------------

CLI = [sys.executable, "-m", "selectllm_local"]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=ENV, timeout=HANG_GUARD
    )


@pytest.mark.parametrize(
    "backend", [pytest.param("vllm", marks=requires_vllm), pytest.param("transformers")]
)
def test_cli_baselines_select_exactly_the_budget(
    backend: str, smollm2_dir: Path, tmp_path: Path
) -> None:
    pool, budget = small_pool(tmp_path, ROWS_CLI), 6
    run_dir = tmp_path / "run"
    common = [str(pool), "--budget", str(budget), "--run-dir", str(run_dir), "--k", "6"]
    engine = ["--model", str(smollm2_dir), "--backend", backend, "--dtype", "float32"]
    engine += ["--max-model-len", "2048", "--ifd-max-length", "256"]
    if backend == "vllm":
        engine.append("--enforce-eager")
    picked = {}
    for name in ("ifd", "cluster-ifd"):
        r = run_cli("baseline", name, *common, *engine, "--json")
        assert r.returncode == 0, r.stderr[-3000:]
        summary = json.loads(r.stdout)
        assert summary["selected"] == budget and summary["ifd"]["rows_scored"] == ROWS_CLI
        # the second method reads the first one's scores: no row is scored twice
        assert summary["ifd"]["scored_now"] == (ROWS_CLI if name == "ifd" else 0)
        rows = [json.loads(x) for x in Path(summary["files"]["selected"]).read_text().splitlines()]
        picks = [row["selectllm"]["index"] for row in rows]
        assert len(picks) == budget == len(set(picks))
        if name == "ifd":  # (a subset of cluster-ifd may hold only rows with IFD >= 1)
            assert all(row["selectllm"]["ifd"] < 1 for row in rows)
        picked[name] = picks
    scores = {}
    for line in (run_dir / "ifd_scores.jsonl").read_text().splitlines():
        row = json.loads(line)
        scores[row["row"]] = math.exp(row["cond"] - row["alone"])
    ranked = sorted((v for v in scores.values() if v < 1), reverse=True)
    assert len(scores) == ROWS_CLI
    top = {round(v, 9) for v in ranked[:budget]}
    rows = (run_dir / "baselines").glob("ifd-*/selected.jsonl")
    got = {round(json.loads(x)["selectllm"]["ifd"], 9) for x in next(rows).read_text().splitlines()}
    assert got == top  # ifd: the global top of the IFD < 1 rows


def test_cli_without_responses_exits_2_naming_the_method(tmp_path: Path) -> None:
    pool = tmp_path / "noresp.jsonl"
    pool.write_text("".join(json.dumps({"instruction": f"Task {i}?"}) + "\n" for i in range(9)))
    for name in ("ifd", "cluster-ifd"):
        r = run_cli("baseline", name, str(pool), "--budget", "3", "--run-dir",
                    str(tmp_path / name), "--model", "smollm2-135m-instruct")  # fmt: skip
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        msg = " ".join(r.stderr.split())
        assert f"'{name}' needs responses" in msg and "--output-field" in msg, msg


# -- the experiment: accepted methods, one score file for every cell -------------------------------


def test_experiment_ifd_cells_score_the_pool_once(tmp_path: Path) -> None:
    import dataclasses

    from selectllm_local.experiment import runner, stages
    from selectllm_local.experiment.config import load_experiment_config
    from selectllm_local.experiment.inputs import load_inputs
    from tests.helpers import tiny_experiment_config

    path = tiny_experiment_config(
        tmp_path,
        ('methods = ["select", "random", "kcenter", "cluster-random"]',
         'methods = ["ifd", "cluster-ifd"]'),
        ("pool_limit = 200", "pool_limit = 40"),
    )  # fmt: skip
    cfg = load_experiment_config(path, run_dir=tmp_path / "exp")
    data = load_inputs(cfg)
    pool_path = runner._write_pool(cfg, data)
    runs = [("ifd", 0), ("cluster-ifd", 0), ("ifd", 1), ("cluster-ifd", 1)]
    for method, seed in runs:
        picks = stages._select(cfg, data, runner.Cell(method, 8, seed), pool_path, progress=False)
        assert len(picks) == 8 == len(set(picks))
    scores = tmp_path / "exp" / "scores" / "ifd_scores.jsonl"
    assert len(scores.read_text().splitlines()) == 40  # every row once, for all four cells
    summaries = sorted((tmp_path / "exp" / "plans").glob("*/baselines/*/summary.json"))
    scored = [json.loads(p.read_text())["ifd"]["scored_now"] for p in summaries]
    assert sorted(scored) == [0, 0, 0, 40]
    # the engine is part of an ifd cell's key (a different scorer redoes the cell)
    other = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, dtype="float32"))
    cell = runner.Cell("ifd", 8, 0)
    assert runner._cell_key(cfg, data, cell, pool_path) != runner._cell_key(
        other, data, cell, pool_path
    )


def test_experiment_ifd_needs_the_engine_model(tmp_path: Path) -> None:
    from selectllm_local.errors import UserError
    from selectllm_local.experiment.config import load_experiment_config
    from tests.helpers import tiny_experiment_config

    path = tiny_experiment_config(
        tmp_path,
        (
            'methods = ["select", "random", "kcenter", "cluster-random"]',
            'methods = ["cluster-ifd"]',
        ),
        ('model = "tiny:tiny-qwen2"\n', ""),
    )
    with pytest.raises(UserError, match=r"method 'cluster-ifd' needs \[engine\] model"):
        load_experiment_config(path)


def test_the_score_key_names_the_engine(tmp_path: Path) -> None:
    """vLLM and transformers agree only to about 1e-3: scores of one are not reused for the other."""
    from selectllm_local.baselines.ifd import model_key

    same = dict(model_path=str(tmp_path), dtype="float32", max_length=512, max_model_len=None)
    assert model_key(**same, backend="vllm") != model_key(**same, backend="transformers")
    assert model_key(**same, backend="vllm") == model_key(**same, backend="vllm")
