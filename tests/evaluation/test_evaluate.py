"""Evaluation: both test-set formats, the two metrics, and reproducible scores for an adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selectllm_local.config import EngineConfig, EvaluateConfig
from selectllm_local.errors import UserError
from selectllm_local.evaluation.evaluate import evaluate_run
from selectllm_local.evaluation.scores import score
from selectllm_local.evaluation.testset import load_testset
from tests.helpers import EXAMPLE_POOL, REPO, requires_gpu, requires_vllm

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
    from selectllm_local.training.finetune import FinetuneConfig, finetune

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
        engine=EngineConfig(backend="transformers", batch_size=4),
        limit=6,
        nll_limit=9,
        max_new_tokens=8,
        max_prompt_tokens=256,
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
    # the file contract: rows of the loaded test set; NLL on its own (larger) set of rows
    assert [r["row"] for r in rows_a] == list(range(6))
    nll_a, nll_b, nll_c = (
        [json.loads(x) for x in (tmp_path / d / "reference_nll.jsonl").read_text().splitlines()]
        for d in "abc"
    )
    assert [r["row"] for r in nll_a] == list(range(9)) and set(nll_a[0]) == {"row", "nll", "tokens"}
    assert nll_a == nll_b and all(r["nll"] > 0 and r["tokens"] > 0 for r in nll_a)
    assert [r["nll"] for r in nll_a] != [r["nll"] for r in nll_c]  # adapter applied
    assert scores["nll_rows"] == 9 == a.nll_rows
    assert scores["reference_nll"] == pytest.approx(sum(r["nll"] for r in nll_a) / 9)
    assert a.reference_nll == scores["reference_nll"] and not a.reused


def test_reference_nll_is_batch_free_response_only_and_matches_transformers(
    tiny_llama_dir: Path, adapter: Path
) -> None:
    """Left padding with position ids: batched equals one row at a time equals the plain
    transformers loss over the response tokens (prompt masked) of base + adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selectllm_local.evaluation.answers import reference_nll
    from selectllm_local.evaluation.refnll import encode
    from selectllm_local.evaluation.testset import TestExample, fit_prompts

    ex = load_testset(PAPER_DOLLY, limit=6)  # prompts and references of very different lengths
    ex.append(TestExample("Name a colour.", "", "Red."))  # short: scored whole, EOS included
    kw = {"base_model": tiny_llama_dir, "adapter": adapter, "progress": False}
    cfg = EvaluateConfig(max_prompt_tokens=128, nll_max_tokens=48)
    batched = reference_nll(
        ex, config=EvaluateConfig(**{**cfg.to_dict(), "engine": {"batch_size": 7}}), **kw
    )
    single = reference_nll(
        ex, config=EvaluateConfig(**{**cfg.to_dict(), "engine": {"batch_size": 1}}), **kw
    )
    assert [r.tokens for r in batched] == [r.tokens for r in single]
    for b, s in zip(batched, single, strict=True):
        assert b.nll == pytest.approx(s.nll, rel=1e-5)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    prompts = fit_prompts(ex, tok, 128)
    for i in (0, 5, 6):
        ids, n = encode(prompts[i], ex[i].reference, tok, 48)
        whole = tok(prompts[i] + ex[i].reference + tok.eos_token)["input_ids"]
        assert ids[:n] == tok(prompts[i])["input_ids"] and ids == whole[: n + 48]
        labels = torch.tensor([ids])
        labels[0, :n] = -100  # the prompt is context, not scored
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([ids]), labels=labels).loss.item()
        assert batched[i].nll == pytest.approx(loss, rel=1e-4)
        assert batched[i].tokens == len(ids) - n == min(48, len(whole) - n)
    assert batched[6].tokens == len(tok("Red." + tok.eos_token)["input_ids"]) < 48


def test_resume_adds_only_the_missing_nll(
    tiny_llama_dir: Path, adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder evaluated before the NLL existed (no rows, no reference_nll.jsonl) gains the NLL
    and its rows on a resumed run, without new answers; a finished one is left alone."""
    from selectllm_local.evaluation import evaluate

    cfg = EvaluateConfig(
        engine=EngineConfig(backend="transformers"),
        limit=4,
        max_new_tokens=6,
        max_prompt_tokens=128,
    )
    kw = {"base_model": tiny_llama_dir, "adapter": adapter, "out_dir": tmp_path, "progress": False}
    evaluate_run(PAPER_DOLLY, config=EvaluateConfig(**{**cfg.to_dict(), "nll_limit": 0}), **kw)
    assert not (tmp_path / "reference_nll.jsonl").exists()
    preds = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    old = [{k: v for k, v in p.items() if k != "row"} for p in preds]  # the old format
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in old))

    def no_generation(*args: object, **kwargs: object) -> None:
        raise AssertionError("answers must be reused")

    monkeypatch.setattr(evaluate, "generate_answers", no_generation)
    out = evaluate_run(PAPER_DOLLY, config=cfg, resume=True, **kw)
    assert out.reused == ["answers"] and out.nll_rows == 4 and out.reference_nll is not None
    assert [
        json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()
    ] == preds
    nll_file = (tmp_path / "reference_nll.jsonl").read_text()
    again = evaluate_run(PAPER_DOLLY, config=cfg, resume=True, **kw)
    assert again.reused == ["answers", "reference_nll"] and again.reference_nll == out.reference_nll
    assert (tmp_path / "reference_nll.jsonl").read_text() == nll_file
    more = evaluate_run(PAPER_DOLLY, config=EvaluateConfig(**{**cfg.to_dict(), "nll_limit": 6}),
                        resume=True, **kw)  # fmt: skip
    assert more.reused == ["answers"] and more.nll_rows == 6


def test_batching_does_not_change_answers(tiny_llama_dir: Path, adapter: Path) -> None:
    from selectllm_local.evaluation.answers import generate_answers

    ex = load_testset(PAPER_DOLLY, limit=5)
    kw = {"base_model": tiny_llama_dir, "adapter": adapter, "progress": False}
    five = EvaluateConfig(
        engine=EngineConfig(backend="transformers", batch_size=5), max_new_tokens=6
    )
    one = EvaluateConfig(
        engine=EngineConfig(backend="transformers", batch_size=1), max_new_tokens=6
    )
    assert generate_answers(ex, config=five, **kw) == generate_answers(ex, config=one, **kw)


def test_unknown_backend_and_missing_adapter(tiny_llama_dir: Path, tmp_path: Path) -> None:
    ex = load_testset(PAPER_DOLLY, limit=1)
    from selectllm_local.evaluation.answers import generate_answers, resolve_backend

    with pytest.raises(UserError, match="--backend 'onnx' is not known"):
        resolve_backend("onnx")
    with pytest.raises(UserError, match="backend"):
        EvaluateConfig(engine=EngineConfig(backend="onnx"))
    with pytest.raises(UserError, match="adapter_config.json"):
        generate_answers(ex, base_model=tiny_llama_dir, adapter=tmp_path)


@pytest.mark.gpu
@requires_gpu
@requires_vllm  # GPU nodes with only the transformers stack skip, with the reason, not fail
def test_vllm_lora_path_on_gpu(tiny_llama_dir: Path, adapter: Path) -> None:
    from selectllm_local.evaluation.answers import generate_answers

    ex = load_testset(PAPER_DOLLY, limit=4)
    cfg = EvaluateConfig(
        engine=EngineConfig(backend="vllm"), max_new_tokens=6, max_prompt_tokens=256
    )
    out = generate_answers(ex, base_model=tiny_llama_dir, adapter=adapter, config=cfg)
    assert len(out) == 4 and all(isinstance(x, str) for x in out)


def test_long_prompts_are_cut_in_the_input_not_from_the_left(tiny_llama_dir: Path) -> None:
    """A long context loses its end, as in training; the instruction and the cue always stay."""
    from transformers import AutoTokenizer

    from selectllm_local.evaluation.testset import TestExample, fit_prompts

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    context = " ".join(f"word{i}" for i in range(600))
    examples = [
        TestExample("Summarise the passage about the river delta.", context, "ref"),
        TestExample("Short task.", "", "ref"),
        TestExample("Explain " + "very " * 400 + "carefully.", "some input", "ref"),
    ]
    long, short, huge = fit_prompts(examples, tok, 96)
    assert short == examples[1].prompt  # fits: unchanged
    assert long.startswith("### Instruction:\nSummarise the passage about the river delta.")
    assert "### Input:\nword0 word1" in long and long.endswith("### Response:\n")
    assert "word599" not in long
    assert huge.startswith("### Instruction:\nExplain very") and huge.endswith("### Response:\n")
    for p in (long, huge):
        assert 80 <= len(tok(p)["input_ids"]) <= 96


def test_auto_sends_an_adapter_without_gpu_to_transformers(adapter: Path) -> None:
    """One ``auto`` policy for select and evaluate: vLLM when installed, an adapter needs a GPU."""
    from selectllm_local.backends import resolve_backend_name
    from selectllm_local.evaluation.answers import resolve_backend
    from selectllm_local.hardware import cuda_available

    assert resolve_backend("auto", adapter=None) == resolve_backend_name("auto")
    expected = resolve_backend_name("auto") if cuda_available() else "transformers"
    assert resolve_backend("auto", adapter=adapter) == expected


def test_long_prompts_keep_their_end(hf_backend) -> None:
    """A backend cuts long prompts from the left so the '### Response:' cue survives (evaluation
    first cuts in the input, ``fit_prompts``; this is the engine's last guard)."""
    from selectllm_local.training.trainset import render_prompt

    prompt = render_prompt("word " * 400 + "What is the capital of France?", "")
    fitted = hf_backend.fit_prompt(prompt, 64)
    assert hf_backend.count_tokens(fitted) <= 64 < hf_backend.count_tokens(prompt)
    assert fitted.rstrip().endswith("### Response:")
    short = render_prompt("Name a colour.", "")
    assert hf_backend.fit_prompt(short, 64) == short  # nothing to cut: unchanged


def test_cli_evaluate_nll_limit(tiny_llama_dir: Path, adapter: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from selectllm_local.cli import app

    argv = ["evaluate", str(PAPER_DOLLY), "--base-model", str(tiny_llama_dir), "--adapter",
            str(adapter), "--backend", "transformers", "--limit", "2", "--nll-limit", "3",
            "--max-new-tokens", "4", "--out", str(tmp_path), "--json"]  # fmt: skip
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{") :])
    assert out["n"] == 2 and out["nll_rows"] == 3 and out["reference_nll"] > 0
    lines = (tmp_path / "reference_nll.jsonl").read_text().splitlines()
    assert [json.loads(x)["row"] for x in lines] == [0, 1, 2]
    bad = CliRunner().invoke(app, [*argv[:-3], "--nll-limit", "-1", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "--nll-limit" in bad.output
