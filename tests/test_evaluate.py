"""Evaluation: both test-set formats, the two metrics, and reproducible scores for an adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import EXAMPLE_POOL, REPO, requires_gpu

from selectllm_local.config import EvaluateConfig
from selectllm_local.errors import UserError
from selectllm_local.evaluate import evaluate_run, load_testset, score

PAPER_DOLLY = REPO / "examples" / "testsets" / "dolly"


def test_paper_format_parses_all_1000() -> None:
    ex = load_testset(PAPER_DOLLY)
    assert len(ex) == 1000
    assert ex[0].instruction == "Given a reference text about Pwojè Pyebwa, who funded the project?"
    assert ex[0].input.startswith("Pwojè Pyebwa (Tree Project)") and not ex[0].input.endswith(" ")
    assert ex[5].instruction == "What do dogs like to do?" and ex[5].input == ""
    assert ex[0].reference.startswith("Pwojè Pyebwa was funded")
    assert "### Input:" not in ex[5].prompt and "### Input:" in ex[0].prompt
    assert load_testset(PAPER_DOLLY / "test_gts.json", limit=3) == ex[:3]


def test_jsonl_records_dolly_and_alpaca_names(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text(
        json.dumps({"instruction": "a", "input": "b", "output": "c"})
        + "\n"
        + EXAMPLE_POOL.read_text().splitlines()[0]
        + "\n"
    )
    ex = load_testset(p)
    assert (ex[0].instruction, ex[0].input, ex[0].reference) == ("a", "b", "c")
    assert ex[1].reference == json.loads(EXAMPLE_POOL.read_text().splitlines()[0])["response"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"instruction": "a"}\n', "record 1: no reference"),
        ("{bad\n", "line 1: not valid JSON"),
        ("", "empty"),
    ],
)
def test_bad_test_sets(tmp_path: Path, content: str, match: str) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text(content)
    with pytest.raises(UserError, match=match):
        load_testset(p)


def test_missing_test_set_and_half_pair(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_testset(tmp_path / "nope.jsonl")
    (tmp_path / "prompt_format.json").write_text("[]")
    with pytest.raises(UserError, match="test_gts.json"):
        load_testset(tmp_path)


def test_score_metrics() -> None:
    refs = ["The cat sat on the mat.", "Paris is the capital of France.", "Two plus two is four."]
    same = score(refs, refs)
    assert same["rougeL_f1"] == pytest.approx(1.0) and same["cosine"] == pytest.approx(
        1.0, abs=1e-5
    )
    other = score(["Quantum chromodynamics of gluons.", "Paris is France's capital.", ""], refs)
    per = other["per_example"]
    assert (
        per["rougeL_f1"][2] == 0.0 and per["cosine"][2] == 0.0 and other["empty_predictions"] == 1
    )
    assert per["cosine"][1] > 0.8 > per["cosine"][0]
    assert 0 < per["rougeL_f1"][1] < 1


@pytest.fixture(scope="module")
def adapter(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from selectllm_local.finetune import FinetuneConfig, finetune

    records = [json.loads(x) for x in EXAMPLE_POOL.read_text().splitlines()[:8]]
    cfg = FinetuneConfig(
        lora_r=8, max_steps=3, batch_size=4, grad_accum=1, max_length=128, learning_rate=5e-2
    )
    return finetune(
        records, base_model=tiny_llama_dir, out_dir=tmp_path_factory.mktemp("ft"), config=cfg
    )


def test_evaluate_run_writes_outputs_and_is_reproducible(
    tiny_llama_dir: Path, adapter: Path, tmp_path: Path
) -> None:
    cfg = EvaluateConfig(
        backend="transformers", limit=6, max_new_tokens=8, batch_size=4, max_prompt_tokens=256
    )
    kw = {"base_model": tiny_llama_dir, "config": cfg, "progress": False}
    a = evaluate_run(PAPER_DOLLY, adapter=adapter, out_dir=tmp_path / "a", **kw)
    b = evaluate_run(PAPER_DOLLY, adapter=adapter, out_dir=tmp_path / "b", **kw)
    base = evaluate_run(PAPER_DOLLY, adapter=None, out_dir=tmp_path / "c", **kw)
    rows_a = [
        json.loads(x) for x in (tmp_path / "a" / "predictions.jsonl").read_text().splitlines()
    ]
    rows_b = [
        json.loads(x) for x in (tmp_path / "b" / "predictions.jsonl").read_text().splitlines()
    ]
    rows_c = [
        json.loads(x) for x in (tmp_path / "c" / "predictions.jsonl").read_text().splitlines()
    ]
    assert len(rows_a) == 6 and set(rows_a[0]) >= {"reference", "prediction", "rougeL_f1", "cosine"}
    assert rows_a == rows_b and (a.rougeL_f1, a.cosine) == (b.rougeL_f1, b.cosine)
    assert [r["prediction"] for r in rows_a] != [r["prediction"] for r in rows_c]  # adapter applied
    scores = json.loads((tmp_path / "a" / "scores.json").read_text())
    assert scores["n"] == 6 and scores["backend"] == "transformers" and base.n == 6


def test_batching_does_not_change_answers(tiny_llama_dir: Path, adapter: Path) -> None:
    from selectllm_local.evaluate import generate_answers

    ex = load_testset(PAPER_DOLLY, limit=5)
    kw = {"base_model": tiny_llama_dir, "adapter": adapter, "progress": False}
    five = EvaluateConfig(backend="transformers", max_new_tokens=6, batch_size=5)
    one = EvaluateConfig(backend="transformers", max_new_tokens=6, batch_size=1)
    assert generate_answers(ex, config=five, **kw) == generate_answers(ex, config=one, **kw)


def test_unknown_backend_and_missing_adapter(tiny_llama_dir: Path, tmp_path: Path) -> None:
    ex = load_testset(PAPER_DOLLY, limit=1)
    from selectllm_local.evaluate import generate_answers, resolve_backend

    with pytest.raises(UserError, match="--backend 'onnx' is not known"):
        resolve_backend("onnx")
    with pytest.raises(UserError, match="backend"):
        EvaluateConfig(backend="onnx")
    with pytest.raises(UserError, match="adapter_config.json"):
        generate_answers(ex, base_model=tiny_llama_dir, adapter=tmp_path)


@pytest.mark.gpu
@requires_gpu
def test_vllm_lora_path_on_gpu(tiny_llama_dir: Path, adapter: Path) -> None:
    from selectllm_local.evaluate import generate_answers

    ex = load_testset(PAPER_DOLLY, limit=4)
    cfg = EvaluateConfig(backend="vllm", max_new_tokens=6, max_prompt_tokens=256)
    out = generate_answers(ex, base_model=tiny_llama_dir, adapter=adapter, config=cfg)
    assert len(out) == 4 and all(isinstance(x, str) for x in out)


def test_auto_sends_an_adapter_without_gpu_to_transformers(adapter: Path) -> None:
    """One ``auto`` policy for select and evaluate: vLLM when installed, an adapter needs a GPU."""
    from selectllm_local.backends import resolve_backend_name
    from selectllm_local.evaluate import resolve_backend
    from selectllm_local.hardware import cuda_available

    assert resolve_backend("auto", adapter=None) == resolve_backend_name("auto")
    expected = resolve_backend_name("auto") if cuda_available() else "transformers"
    assert resolve_backend("auto", adapter=adapter) == expected


def test_long_prompts_keep_their_end(hf_backend) -> None:
    """Evaluation cuts long prompts from the left so the '### Response:' cue survives."""
    from selectllm_local.trainset import render_prompt

    prompt = render_prompt("word " * 400 + "What is the capital of France?", "")
    fitted = hf_backend.fit_prompt(prompt, 64)
    assert hf_backend.count_tokens(fitted) <= 64 < hf_backend.count_tokens(prompt)
    assert fitted.rstrip().endswith("### Response:")
    short = render_prompt("Name a colour.", "")
    assert hf_backend.fit_prompt(short, 64) == short  # nothing to cut: unchanged
