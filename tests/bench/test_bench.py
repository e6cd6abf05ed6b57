"""The benchmark library: a real tiny run (shared vLLM engine, transformers), schema, plot, dry run."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest

from selectllm_local import hardware
from selectllm_local.bench import config as benchconfig
from selectllm_local.bench import dry as benchdry
from selectllm_local.bench import output as benchout
from selectllm_local.bench import run as bench
from selectllm_local.errors import UserError
from selectllm_local.models.random_weights import SHAPES, non_embedding_params
from tests.helpers import ALPACA, DOLLY, requires_shared_data


def _check_png(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100
    assert data.rstrip(b"\x00")[-8:-4] == b"IEND"
    return width, height


def _check_schema(doc: dict, n_settings: int) -> None:
    assert tuple(doc) == benchconfig.TOP_KEYS
    assert doc["schema"] == benchconfig.SCHEMA
    env = doc["environment"]
    for key in ("cpu_model", "cpu_cores", "torch_threads", "gpu_name", "packages", "python"):
        assert key in env
    assert doc["peak"]["flops"] > 1e8  # any machine does more than 0.1 GFLOP/s
    assert len(doc["results"]) == n_settings
    for row in doc["results"]:
        assert tuple(row) == benchconfig.RESULT_KEYS
        assert row["prompts"] == doc["workload"]["subsets"]
        assert row["prompt_tokens"] > row["prompts"] * 50
        assert row["engine_seconds"] > 0 and row["select_seconds"] >= row["engine_seconds"]
        assert 0 < row["prefill_utilization"] < 5  # tiny models are far from the peak
        assert row["pipeline_utilization"] <= row["prefill_utilization"]
        assert len(row["seconds_all"]) == doc["workload"]["repeats"]
        assert row["peak_rss_bytes"] is None or row["peak_rss_bytes"] > 10 * 2**20


def test_tiny_benchmark_vllm_schema_and_plot(vllm_backend, tmp_path: Path) -> None:
    cfg = benchconfig.config_from_preset("tiny", pool=DOLLY, machine="CI")
    doc = bench.run_benchmark(cfg, backend=vllm_backend)
    vllm_settings = [s for s in cfg.settings if s.backend == "vllm"]
    _check_schema(doc, len(vllm_settings))
    rows = {r["label"]: r for r in doc["results"]}
    constrained, logprobs = rows["vllm ids constrained"], rows["vllm logprobs"]
    assert constrained["fallbacks"] == 0  # the grammar admits only valid answers
    assert logprobs["output_tokens"] == logprobs["prompts"]  # one forward pass, one token
    assert constrained["cached_prompt_tokens"] > 0  # the shared system block is reused
    assert doc["model"]["non_embedding_params"] == non_embedding_params(SHAPES["tiny-qwen2"])
    stages = doc["stages"]  # one full select_run through the pipeline on the same engine
    assert stages["subsets"] == cfg.subsets
    for key in ("load", "embed", "cluster", "subsets", "engine", "our_code_in_select", "total"):
        assert stages["seconds"][key] >= 0, key
    assert stages["seconds"]["engine"] > 0 and stages["tokens"]["prompt"] > 0
    paths = benchout.write_outputs(doc, tmp_path, "tiny")
    assert (
        json.loads(paths["json"].read_text())["results"][0]["label"] == doc["results"][0]["label"]
    )
    _check_png(paths["png"])
    table = benchout.results_table(doc)
    assert table.row_count == len(vllm_settings)


def test_tiny_benchmark_transformers_padding(hf_backend) -> None:
    cfg = benchconfig.config_from_preset("tiny", pool=DOLLY, repeats=1, stages=False)
    doc = bench.run_benchmark(cfg, backend=hf_backend)
    _check_schema(doc, 1)
    assert doc["stages"] is None
    row = doc["results"][0]
    assert row["backend"] == "transformers"
    # prompts are bucketed by length, so padding stays under the 5% target
    assert 0 <= row["padding_fraction"] < 0.05


def test_each_measurement_tokenizes_into_its_own_empty_store(
    hf_backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's candidate-token store is neither read nor written: each measured setting and
    the stages select open their own empty store (so no timing is warm from an earlier run), the
    variable is restored after, and the JSON says so."""
    import os

    from selectllm_local.selection import tokencache

    user = tmp_path / "user-store"
    monkeypatch.setenv(tokencache.ENV, str(user))
    roots: list[Path | None] = []
    real_open = tokencache.open_store

    def spy(tokenizer, fast, special, suffix, root):  # type: ignore[no-untyped-def]
        roots.append(root)
        assert root is not None and not any(root.iterdir())  # on, and empty
        return real_open(tokenizer, fast, special, suffix, root)

    monkeypatch.setattr(tokencache, "open_store", spy)
    cfg = benchconfig.config_from_preset(
        "tiny", pool=DOLLY, repeats=1, warmup=0, setting=["transformers:b8", "transformers:free"]
    )
    doc = bench.run_benchmark(cfg, backend=hf_backend)
    assert doc["environment"]["token_store"] == "fresh"
    assert len(doc["results"]) == 2 and doc["stages"] is not None
    assert len(roots) == 3 and len(set(roots)) == 3, roots  # two settings, then the stages
    assert all(r != user and r is not None and not r.exists() for r in roots)
    assert os.environ[tokencache.ENV] == str(user) and not user.exists()
    monkeypatch.delenv(tokencache.ENV)
    with bench.fresh_token_store() as root:
        assert os.environ[tokencache.ENV] == str(root)
    assert tokencache.ENV not in os.environ


def test_strided_plan_shows_every_row_once() -> None:
    plan = bench.strided_plan(5, 4, 2)
    shown = sorted(c for s in plan.subsets for c in s.candidates)
    assert shown == list(range(20))
    assert plan.budget == 10 and all(len(s.candidates) == 4 for s in plan.subsets)
    assert plan.subsets[1].candidates == [1, 6, 11, 16]


def test_parse_setting() -> None:
    s = benchconfig.parse_setting("transformers:b8:free")
    assert (s.backend, s.batch, s.constrained) == ("transformers", 8, False)
    s = benchconfig.parse_setting("vllm:logprobs:nocache")
    assert (s.mode, s.prefix_caching, s.label) == (
        "logprobs",
        False,
        "vllm logprobs no-prefix-cache",
    )
    with pytest.raises(UserError, match="--setting"):
        benchconfig.parse_setting("tensorrt")
    with pytest.raises(UserError, match="unknown option"):
        benchconfig.parse_setting("vllm:fast")
    with pytest.raises(UserError, match="--preset"):
        benchconfig.config_from_preset("huge")
    with pytest.raises(UserError, match="--picks"):
        benchconfig.BenchConfig(candidates=4, picks=4)


def test_matmul_peak_is_measured() -> None:
    r = hardware.measure_matmul("float32", "cpu", size=256, repeats=3)
    assert r.best_flops >= r.median_flops > 1e8
    assert hardware.gpu_spec("h100").bf16_dense_tflops == 989.0
    assert hardware.match_gpu("NVIDIA H100 80GB HBM3").name == "NVIDIA H100 SXM"
    assert hardware.match_gpu("NVIDIA H200").bf16_dense_tflops == 989.0
    assert hardware.match_gpu("NVIDIA A100-SXM4-80GB").bf16_dense_tflops == 312.0
    with pytest.raises(UserError, match="--gpu"):
        hardware.gpu_spec("voodoo2")


def test_hardware_facts_have_one_answer() -> None:
    """Device and dtype: explicit choices pass through; ``auto`` follows the device."""
    gpu = hardware.cuda_available()
    assert hardware.default_device() == ("cuda" if gpu else "cpu")
    assert hardware.default_device("cpu") == "cpu"
    assert hardware.resolve_dtype("float16", "cpu") == "float16"
    assert hardware.resolve_dtype("auto", "cpu", cpu_auto="float32") == "float32"
    assert hardware.resolve_dtype("auto", "cpu") in ("bfloat16", "float32")
    assert (hardware.gpu_name() is None) == (not gpu)
    facts = hardware.machine_facts()
    assert facts["cpu_cores"] and facts["torch_threads"] >= 1
    if Path("/proc/cpuinfo").is_file():  # Linux: the CPU's flags say whether bf16 is native
        flags = Path("/proc/cpuinfo").read_text().split()
        assert facts["cpu_native_bf16"] is ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_dry_run_matches_hand_computed_flops(tmp_path: Path) -> None:
    # 10 rows of 40 characters: 10 characters per token by hand under the 4 chars/token heuristic
    pool = tmp_path / "pool.jsonl"
    rows = [
        {"instruction": f"Write a short poem about the number {i:04d}."[:40].ljust(40, "x")}
        for i in range(10)
    ]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    est = benchdry.dry_run(pool, shape="llama-3-8b", gpu="h100", utilization=0.4, candidates=5)
    # llama-3-8b by hand: 32 layers x (q, o: 4096^2 each; k, v: 4096 x 1024 each; mlp 3 x 4096 x 14336)
    n = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
    assert est["non_embedding_params"] == n == 6_979_321_856
    assert est["prompts"] == 2 and est["candidates_per_prompt"] == 5
    assert est["prompt_tokens"] > 2 * 5 * 10  # candidates plus the template
    assert est["prefill_flops"] == pytest.approx(2 * n * est["prompt_tokens"])
    assert est["prefill_seconds"] == pytest.approx(est["prefill_flops"] / (989e12 * 0.4))
    assert est["prefill_seconds_prefix_cached"] < est["prefill_seconds"]
    weights = (n + 2 * 128256 * 4096) * 2  # bf16, untied embeddings and LM head
    steps = math.ceil(2 / 256) * est["answer_tokens_per_prompt"]
    assert est["decode_seconds"] == pytest.approx(steps * weights / 3.35e12)
    assert "Prompt tokens" in benchdry.format_dry_run(est)


@requires_shared_data
def test_dry_run_alpaca_8b_h100_under_two_minutes() -> None:
    est = benchdry.dry_run(ALPACA, shape="llama-3-8b", gpu="h100", utilization=0.4)
    assert est["pool_rows"] == 52002
    assert est["prompts"] == math.ceil(52002 / est["candidates_per_prompt"])
    assert est["total_seconds"] < 120


def test_bench_cli_dry_run(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from selectllm_local.cli import app

    pool = tmp_path / "pool.jsonl"
    pool.write_text(
        "".join(json.dumps({"instruction": f"Task number {i}"}) + "\n" for i in range(12))
    )
    args = [
        "bench",
        "--dry-run",
        "--pool",
        str(pool),
        "--candidates",
        "4",
        "--gpu",
        "a100",
        "--json",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    est = json.loads(res.stdout[res.stdout.index("{") :])
    assert est["prompts"] == 3 and est["peak_flops"] == 312e12
    res = CliRunner().invoke(app, ["bench", "--dry-run", "--pool", str(pool), "--gpu", "voodoo2"])
    assert res.exit_code == 2 and "voodoo2" in res.output


def test_plan_only_plans_the_stages_folder(tmp_path: Path) -> None:
    """``bench --plan-only --stages-dir``: the ``select`` of ``--stages`` planned there (pool,
    embeddings, clusters, subsets) with the benchmark's shape, and no model loaded."""
    from typer.testing import CliRunner

    from selectllm_local.cli import app
    from tests.helpers import EXAMPLE_POOL

    stages = tmp_path / "stages"
    args = ["bench", "--pool", str(EXAMPLE_POOL), "--preset", "tiny", "--plan-only",
            "--stages-dir", str(stages), "--json"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout[res.stdout.index("{") :]) == {"planned": str(stages)}
    cfg = benchconfig.config_from_preset("tiny", pool=EXAMPLE_POOL)
    plan = json.loads((stages / "plan_summary.json").read_text("utf-8"))
    assert plan["budget"] == cfg.subsets * cfg.picks and plan["clusters"]["k"] == cfg.candidates
    assert plan["pool"]["kept"] == cfg.subsets * cfg.candidates
    assert plan["prompt_tokens_estimate"]["prompts"] == plan["subsets"]["count"] > 0
    assert not (stages / "responses.jsonl").exists()  # planned, not selected
