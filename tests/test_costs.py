"""``selectllm experiment --dry-run``: the cost estimate of a whole experiment (experiment/estimate.py).

The arithmetic runs on given rates (a rates file written here), real configs and the real pool
loader and prompt builder; no model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA, TINY_CI, tiny_experiment_config
from typer.testing import CliRunner

from selectllm_local.cli import app
from selectllm_local.errors import UserError
from selectllm_local.experiment import load_experiment_config
from selectllm_local.experiment.estimate import estimate_experiment, format_estimate
from selectllm_local.experiment.rates import RATE_KEYS, Costs, model_size

TINY = TINY_CI
RATES = {
    "non_embedding_params": 1e8,
    "selection_vllm_prompt_tokens_per_s": 1000.0,
    "selection_vllm_logprobs_prompt_tokens_per_s": 800.0,
    "selection_transformers_prompt_tokens_per_s": 500.0,
    "finetune_tokens_per_s": 200.0,
    "evaluate_output_tokens_per_s": 50.0,
    "evaluate_answer_fill": 0.5,
}


def _rates(tmp_path: Path, **change: object) -> Path:
    rates = {**RATES, **change}
    p = tmp_path / "rates.json"
    p.write_text(json.dumps({"machine": "test", "rates": {k: v for k, v in rates.items() if v}}))
    return p


def _stage(est: dict, prefix: str) -> dict:
    return next(s for s in est["stages"] if s["name"].startswith(prefix))


def test_rates_scale_by_model_size() -> None:
    c = Costs(RATES, "h100", 0.5)
    # 1e8 measured params at 200 tokens/s -> a 4x larger model trains 4x slower.
    assert c.cpu("finetune_tokens_per_s", 2000, 1e8) == pytest.approx(10.0)
    assert c.cpu("finetune_tokens_per_s", 2000, 4e8) == pytest.approx(40.0)
    # H100 datasheet: 989 TFLOP/s dense bf16 at 50%; 3,350 GB/s for decode (bf16 weights).
    assert c.compute(989e12 * 0.5 * 3) == pytest.approx(3.0)
    assert c.decode(10, 3.35e9 / 2) == pytest.approx(10 * 1e-3)


def test_doubling_the_budget_doubles_fine_tune_time(tmp_path: Path) -> None:
    rates = _rates(tmp_path)
    est = {}
    for b in (8, 16):
        cfg = tiny_experiment_config(
            tmp_path,
            ('methods = ["select", "random", "kcenter", "cluster-random"]', 'methods = ["random"]'),
            ("budgets = [8, 16]", f"budgets = [{b}]"),
            ("max_steps = 3\n", ""),
            name=f"b{b}.toml",
        )
        est[b] = estimate_experiment(cfg, rates=rates)
    small, large = _stage(est[8], "fine-tune"), _stage(est[16], "fine-tune")
    assert large["tokens"] == pytest.approx(2 * small["tokens"])
    assert large["cpu_seconds"] == pytest.approx(2 * small["cpu_seconds"])
    assert large["gpu_seconds"] == pytest.approx(2 * small["gpu_seconds"])
    # evaluation does not depend on the budget
    assert _stage(est[16], "evaluation")["cpu_seconds"] == pytest.approx(
        _stage(est[8], "evaluation")["cpu_seconds"]
    )


def test_logprob_permutations_zero_multiplies_selection_by_k(tmp_path: Path) -> None:
    rates = _rates(tmp_path)
    est = {}
    for perms in (1, 0):
        cfg = tiny_experiment_config(
            tmp_path,
            ('methods = ["select", "random", "kcenter", "cluster-random"]',
             'methods = ["select:logprobs"]'),
            ("[engine]", f"[selector]\npermutations = {perms}\n\n[engine]"),
            name=f"p{perms}.toml",
        )  # fmt: skip
        est[perms] = estimate_experiment(cfg, rates=rates)
    for b in (8, 16):
        one, all_k = (
            _stage(est[1], f"selection select:logprobs b{b}"),
            _stage(est[0], f"selection select:logprobs b{b}"),
        )
        assert "K=8" in all_k["detail"]  # [plan] n_clusters = 8
        assert all_k["tokens"] == pytest.approx(8 * one["tokens"])
        assert all_k["cpu_seconds"] == pytest.approx(8 * one["cpu_seconds"])
        assert all_k["gpu_seconds"] == pytest.approx(8 * one["gpu_seconds"])
        # one selection per (budget, seed): the tiny config's two seeds each select afresh
        assert one["runs"] == 2


def test_missing_model_folder_sized_from_its_name_only_in_a_dry_run(tmp_path: Path) -> None:
    cfg = tiny_experiment_config(
        tmp_path, ('base_model = "tiny:tiny-llama"', 'base_model = "../models/Llama-2-7b-hf"')
    )
    with pytest.raises(UserError, match=r"\[experiment\] base_model"):
        load_experiment_config(cfg)  # a real run still needs the folder
    est = estimate_experiment(cfg, rates=_rates(tmp_path))
    base = est["models"]["base_model"]
    assert base["non_embedding_params"] == 6_476_005_376  # Llama-2-7B's published shape
    assert base["size_from"] == "shape llama-2-7b (from the name)"
    assert model_size("/x/Qwen2.5-7B-Instruct").source.startswith("shape qwen2.5-7b")
    mistral = model_size("/x/Mistral-7B-v0.1")  # no shape known: the size in the name
    assert mistral.non_embedding_params == 7e9 and "'7b'" in mistral.source
    with pytest.raises(UserError, match="name gives no size"):
        model_size("/x/my-model")


def test_cli_dry_run_of_the_smollm2_experiment_prints_both_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = REPO / "experiments" / "smollm2_dolly.toml"
    if not (SHARED_DATA / "dolly" / "databricks-dolly-15k.jsonl").is_file():
        text = cfg.read_text()
        text = text.replace(
            "../../shared/data/dolly/databricks-dolly-15k.jsonl",
            str(REPO / "examples" / "dolly_sample_1500.jsonl"),
        ).replace(
            "../../shared/data/selectllm_testsets/dolly", str(REPO / "examples/testsets/dolly")
        )
        cfg = tmp_path / "smollm2.toml"
        cfg.write_text(text)
    rates = _rates(tmp_path)
    monkeypatch.chdir(tmp_path)  # the default run directory is relative to here
    before = sorted(tmp_path.iterdir())
    res = CliRunner().invoke(app, ["experiment", str(cfg), "--dry-run", "--rates", str(rates)])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "this CPU" in out and "one H100" in out
    assert "scaled from measured SmolLM2-135M rates" in out and "estimate, not measured" in out
    assert "6 cells" in out and "K=5" in out  # 1,000 rows, budget 200 -> 5 candidates
    assert sorted(tmp_path.iterdir()) == before  # nothing written


@pytest.mark.parametrize("missing", ["finetune_tokens_per_s", "evaluate_answer_fill"])
def test_rates_file_missing_a_key_exits_2_naming_it(tmp_path: Path, missing: str) -> None:
    assert missing in RATE_KEYS
    res = CliRunner().invoke(
        app,
        ["experiment", str(TINY), "--dry-run", "--rates", str(_rates(tmp_path, **{missing: 0}))],
    )
    assert res.exit_code == 2
    assert missing in res.output and "Traceback" not in res.output


def test_bad_rates_file_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "rates.json"
    bad.write_text("{not json")
    res = CliRunner().invoke(app, ["experiment", str(TINY), "--dry-run", "--rates", str(bad)])
    assert res.exit_code == 2 and "--rates" in res.output and "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_pool_override_only_with_dry_run(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["experiment", str(TINY), "--pool", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 2 and "--dry-run" in res.output


def test_without_a_rates_file_only_the_gpu_column_is_filled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no benchmarks/results/costs_cpu2_smollm2.json here
    est = estimate_experiment(TINY)
    assert est["total_cpu_seconds"] is None and est["total_gpu_seconds"] > 0
    text = format_estimate(est)
    assert "no rates file" in text and "estimate, not measured" in text
