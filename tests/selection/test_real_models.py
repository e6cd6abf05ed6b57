"""``select`` with a real model: SmolLM2-135M-Instruct (converted from its GGUF) on 60 Dolly rows.

Random-weight models prove the plumbing; this proves a real tokenizer, a real chat template and a
real model's habits go through: the exact budget on both backends and in logprob mode, every
constrained answer valid on the first try, and the model's own chat template. In free
(unconstrained) decoding a 135M model writes invalid answers now and then; the share is logged
(``-s`` shows it) and only what must hold whatever it writes is asserted: retries and the
fallback still give exactly the budget, and every subset is accounted for.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from tests.helpers import EXAMPLE_POOL, requires_vllm

log = logging.getLogger(__name__)

ROWS, K, BUDGET = 60, 6, 15  # 10 prompts of 6 candidates; 5 ask for 2 picks, 5 for 1
CUT = 48  # tokens per candidate: keeps the CPU cost of a prompt near 800 tokens


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines = EXAMPLE_POOL.read_text("utf-8").splitlines()[:ROWS]
    path = tmp_path_factory.mktemp("pool") / "dolly60.jsonl"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


@pytest.fixture(scope="module")
def planned(pool: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One planned run directory (embeddings, clusters, subsets) that every test copies."""
    from selectllm_local.config import PlanConfig
    from selectllm_local.run.pipeline import plan_run

    run_dir = tmp_path_factory.mktemp("planned") / "run"
    plan_run(
        PlanConfig(pool=pool, budget=BUDGET, n_clusters=K, seed=0, run_dir=run_dir), progress=False
    )
    return run_dir


def run_select(pool: Path, planned: Path, run_dir: Path, model: Path, backend, **over):  # noqa: ANN001, ANN201
    from selectllm_local.config import SelectConfig
    from selectllm_local.run.pipeline import select_run

    shutil.copytree(planned, run_dir, ignore=shutil.ignore_patterns(".lock"))
    cfg = SelectConfig.of(pool=pool, budget=BUDGET, model=str(model), n_clusters=K, seed=0,
                       dtype="float32", run_dir=run_dir, backend=backend.name,
                       max_candidate_tokens=CUT, min_candidate_tokens=16, **over)  # fmt: skip
    out = select_run(cfg, backend=backend, progress=False)
    assert len(out.selected) == BUDGET == len(set(out.selected)) == out.summary.selected
    assert all(0 <= i < ROWS for i in out.selected)
    lines = (run_dir / "selected.jsonl").read_text("utf-8").splitlines()
    assert len(lines) == BUDGET
    return out


def test_chat_template_and_bos_are_the_models_own(smollm2_dir: Path) -> None:
    """The converted folder carries the GGUF's own template and BOS rule, not a default one."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from selectllm_local.models.registry import fetch_gguf

    fields = GGUFReader(str(fetch_gguf("smollm2-135m-instruct"))).fields
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tok.chat_template == fields["tokenizer.chat_template"].contents()
    assert "<|im_start|>" in tok.chat_template  # SmolLM2's ChatML, not a generic fallback
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Pick one."}], tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nPick one.<|im_end|>\n<|im_start|>assistant\n")
    adds_bos = tok("hello")["input_ids"][0] == tok.bos_token_id
    assert adds_bos == bool(fields["tokenizer.ggml.add_bos_token"].contents())
    assert tok.eos_token == "<|im_end|>"


@requires_vllm
def test_vllm_constrained_exact_budget_all_valid_first_try(
    pool: Path, planned: Path, tmp_path: Path, smollm2_dir: Path, smollm2_vllm
) -> None:
    out = run_select(pool, planned, tmp_path / "run", smollm2_dir, smollm2_vllm)
    c = out.summary.counts.to_dict()
    assert c["asked"] == c["subsets"] == ROWS // K
    assert c["valid_first_try"] == c["asked"] and c["retried"] == c["fallback"] == 0
    assert str(smollm2_vllm.llm.llm_engine.model_config.dtype) == "torch.float32"
    print(
        f"\nSmolLM2 vLLM select: {json.dumps(out.summary.seconds.to_dict())} {out.summary.throughput}"
    )


@requires_vllm
def test_vllm_logprobs_mode_exact_budget(
    pool: Path, planned: Path, tmp_path: Path, smollm2_dir: Path, smollm2_vllm
) -> None:
    out = run_select(pool, planned, tmp_path / "run", smollm2_dir, smollm2_vllm, mode="logprobs")
    assert out.summary.mode == "logprobs" and out.summary.counts.fallback == 0


@requires_vllm
def test_vllm_free_decoding_accounts_for_every_answer(
    pool: Path, planned: Path, tmp_path: Path, smollm2_dir: Path, smollm2_vllm
) -> None:
    out = run_select(pool, planned, tmp_path / "run", smollm2_dir, smollm2_vllm, constrained=False)
    c = out.summary.counts.to_dict()
    assert c["valid_first_try"] + c["retried"] + c["fallback"] == c["asked"] == ROWS // K
    assert c["invalid_answers"] == sum(c["errors"].values())
    share = c["valid_first_try"] / c["asked"]
    print(f"\nSmolLM2-135M free decoding: {share:.0%} valid first try, counts {c}")
    log.info("free decoding: %.0f%% valid first try (%s)", 100 * share, c["errors"])


def test_transformers_constrained_exact_budget(
    pool: Path, planned: Path, tmp_path: Path, smollm2_dir: Path
) -> None:
    from selectllm_local.backends import load_backend
    from selectllm_local.config import EngineConfig
    from selectllm_local.hardware import engine_dtype

    backend = load_backend("transformers", str(smollm2_dir), EngineConfig(batch_size=10))
    try:  # dtype auto: float32 unless this CPU has native bf16
        assert str(backend.model.dtype) == f"torch.{engine_dtype('auto', 'cpu')}"
        out = run_select(pool, planned, tmp_path / "run", smollm2_dir, backend)
    finally:
        backend.close()
    c = out.summary.counts.to_dict()
    assert c["valid_first_try"] == c["asked"] == ROWS // K and c["fallback"] == 0
    print(f"\nSmolLM2 transformers select: {json.dumps(out.summary.seconds.to_dict())}")
