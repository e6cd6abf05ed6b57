"""``selectllm experiment --dry-run``: the cost estimate of a whole experiment (experiment/estimate.py).

The arithmetic runs on given rates (a rates file written here), real configs and the real pool
loader and prompt builder; no model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from selectllm_local.cli import app
from selectllm_local.costs.estimate import estimate_experiment, format_estimate
from selectllm_local.costs.rates import RATE_KEYS, Costs, model_size
from selectllm_local.errors import UserError
from selectllm_local.experiment import load_experiment_config
from tests.helpers import REPO, TINY_CI, tiny_experiment_config

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
    cfg = REPO / "experiments" / "smollm2_dolly.toml"  # its data ship with the repository
    rates = _rates(tmp_path)
    monkeypatch.chdir(tmp_path)  # the default run directory is relative to here
    before = sorted(tmp_path.iterdir())
    res = CliRunner().invoke(app, ["experiment", str(cfg), "--dry-run", "--rates", str(rates)])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "this CPU" in out and "one H100" in out
    assert "scaled from measured SmolLM2-135M rates" in out and "estimate, not measured" in out
    # 8 methods x 3 seeds, 2 seeds for three of them (method_seeds); 1,000 rows, budget 200 -> K=5
    assert "= 21 cells" in out and "K=5" in out
    assert "Removed from the pool as test examples: 1,023 rows (1,001 same instruction + r" in out
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


def _gpu_rates(tmp_path: Path, **rates: float) -> Path:
    p = tmp_path / "gpu_rates.json"
    doc = {"machine": "1x test GPU", "rates": {"non_embedding_params": 1e9, **rates}}
    p.write_text(json.dumps(doc))
    return p


def test_gpu_rates_replace_the_datasheet_for_the_stages_they_measured(tmp_path: Path) -> None:
    cfg = tiny_experiment_config(
        tmp_path,
        ('methods = ["select", "random", "kcenter", "cluster-random"]', 'methods = ["random"]'),
        ("max_steps = 3\n", ""),
    )
    rates = _rates(tmp_path)
    plain = estimate_experiment(cfg, rates=rates)
    slow = _gpu_rates(tmp_path, finetune_tokens_per_s=1000.0)
    est = estimate_experiment(cfg, rates=rates, gpu_rates=slow)
    ft, ev = _stage(est, "fine-tune"), _stage(est, "evaluation")
    assert ft["gpu_measured"] and not ev["gpu_measured"]
    assert ev["gpu_seconds"] == _stage(plain, "evaluation")["gpu_seconds"]  # datasheet kept
    # 1e9 measured params at 1,000 tokens/s; the tiny base model is far smaller, so it trains
    # faster by the ratio of parameters; twice the rate halves the time.
    fast = estimate_experiment(
        cfg, rates=rates, gpu_rates=_gpu_rates(tmp_path, finetune_tokens_per_s=2000.0)
    )
    assert _stage(fast, "fine-tune")["gpu_seconds"] == pytest.approx(ft["gpu_seconds"] / 2)
    table = format_estimate(est)
    assert "*  scaled from rates measured on a GPU" in table and "1x test GPU" in table
    assert "fine-tune 1,000 trained tokens/s" in table
    assert "*" not in format_estimate(plain).split("(1)")[0]


def test_gpu_evaluation_rate_scales_with_batches_and_answer_cap() -> None:
    measured = {"non_embedding_params": 1e9, "evaluate_answers_per_s": 2.0,
                "evaluate_batch_size": 16.0, "evaluate_max_new_tokens": 100.0}  # fmt: skip
    c = Costs(None, "h100", 0.4, measured)
    # measured: 16 answers per 8 s = 100 steps of 0.08 s; 64 answers in batches of 16 = 32 s
    assert c.gpu_answers(64, 16, 100, 1e9) == pytest.approx(32.0)
    assert c.gpu_answers(64, 32, 100, 1e9) == pytest.approx(16.0)  # half the batches
    assert c.gpu_answers(64, 16, 50, 2e9) == pytest.approx(32.0)  # half the steps, 2x params
    assert Costs(None, "h100", 0.4, {"non_embedding_params": 1e9}).gpu_answers(1, 1, 1, 1) is None


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("not json", "cannot read it as JSON"),
        (None, "no such file"),
        ({"rates": {"finetune_tokens_per_s": 10}}, "non_embedding_params"),
        ({"rates": {"non_embedding_params": 1e9}}, "no GPU rate in it"),
        ({"rates": {"non_embedding_params": 1e9, "evaluate_answers_per_s": 1}},
         "needs evaluate_batch_size and evaluate_max_new_tokens"),
    ],
)  # fmt: skip
def test_bad_gpu_rates_file_names_the_flag(tmp_path: Path, doc: object, message: str) -> None:
    p = tmp_path / "bad.json"
    if doc is not None:
        p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    cfg = tiny_experiment_config(tmp_path)
    with pytest.raises(UserError, match=message) as err:
        estimate_experiment(cfg, rates=_rates(tmp_path), gpu_rates=p)
    assert str(err.value).startswith(f"--gpu-rates {p}")


def test_committed_gpu_rates_load(tmp_path: Path) -> None:
    from selectllm_local.costs.rates import load_gpu_rates

    rates, where = load_gpu_rates(REPO / "benchmarks/results/costs_gpu_h200_llama2-7b.json")
    assert rates is not None and "H200" in where
    assert {"finetune_tokens_per_s", "evaluate_answers_per_s"} <= set(rates)
