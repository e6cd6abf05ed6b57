"""Every prompt of the example run, one SHA-256 each, against ``tests/golden/prompt_hashes.json``.

The golden selection (``test_golden_selection.py``) cannot see a prompt change: its random-weight
model picks by position, so a commit that rewrote every prompt passed it. This test renders every
prompt that the same example run (the first 300 rows of ``examples/dolly_sample_1500.jsonl``,
budget 30, seed 0, every other setting at its default) sends to the engine, with the README's
selector, SmolLM2-135M-Instruct: its real tokenizer and chat template (cached offline; CI fetches
it before the tests). It covers generate mode (ids), ``--reasons`` and ``--mode logprobs``, and the
first prompt with each other shipped criteria file in ``prompts/criteria/``. No model runs: the
plan is real (packaged embedder, FAISS k-means), the prompts go through ``select_run`` as in a
real run, and only the engine is replaced by one that records what it is sent (answers are the
first ids; one round, so no prompt depends on them).

A prompt changes only when the method changes on purpose (template, criteria, candidate
formatting, truncation, plan); then regenerate the hashes with one command and say why in the
commit::

    SELECTLLM_REGEN_GOLDEN=1 python -m pytest tests/selection/test_prompt_golden.py

The failure message names each changed prompt and says whether the plan changed too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from selectllm_local.backends.base import ChatTokenizer
from selectllm_local.backends.fake import FakeBackend
from tests.helpers import EXAMPLE_POOL, GOLDEN_DIR, REPO

GOLDEN = GOLDEN_DIR / "prompt_hashes.json"
ROWS, BUDGET, SEED = 300, 30, 0  # the golden selection's example run
MODEL = "smollm2-135m-instruct"
# The example run's prompts in each mode; then one prompt per other shipped criteria file (its
# system block holds the criteria, identical in every prompt of a run).
VARIANTS: dict[str, dict[str, Any]] = {
    "generate": {},
    "reasons": {"reasons": True},
    "logprobs": {"mode": "logprobs"},
}
OTHER_CRITERIA = sorted(p.name for p in (REPO / "prompts" / "criteria").glob("*.md"))
OTHER_CRITERIA.remove("default.md")


class PromptRecorder(FakeBackend):
    """The engine's side of the run: the real tokenizer and chat template render and count (as
    the vLLM and transformers backends do, through ``ChatTokenizer``); every prompt sent is kept
    in ``calls`` (FakeBackend), answered with the first ids (generate) or falling scores (logprobs).
    """

    def __init__(self, model_dir: Path) -> None:
        config = json.loads((model_dir / "config.json").read_text("utf-8"))
        super().__init__(max_context=int(config["max_position_embeddings"]))
        from transformers import AutoTokenizer

        self.chat = ChatTokenizer(AutoTokenizer.from_pretrained(model_dir))
        self.tokenizer = self.chat.tokenizer
        self.special_tokens = self.chat.special_tokens
        self.model_path = str(model_dir)

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return self.chat.render_chat(messages)

    def count_tokens(self, text: str) -> int:
        return self.chat.count_tokens(text)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(pool, planned run directory, plan digest): the example run's plan, made once."""
    from selectllm_local.config import PlanConfig
    from selectllm_local.run.pipeline import plan_run

    root = tmp_path_factory.mktemp("prompt-golden")
    pool = root / "example.jsonl"
    pool.write_text("\n".join(EXAMPLE_POOL.read_text("utf-8").splitlines()[:ROWS]) + "\n", "utf-8")
    run_dir = root / "planned"
    cfg = PlanConfig(pool=pool, budget=BUDGET, seed=SEED, run_dir=run_dir)
    plan = plan_run(cfg, progress=False).plan
    digest = sha(json.dumps([[s.round, s.id, s.k, s.candidates] for s in plan.subsets]))
    return pool, run_dir, digest


def render(
    planned: tuple[Path, Path, str], model_dir: Path, name: str, run_dir: Path, **over: Any
) -> dict[str, str]:
    """Run ``select`` of the example run with ``over`` settings; the hash of each prompt sent,
    keyed ``name/call/position`` in the order the engine received them."""
    from selectllm_local.config import SelectConfig
    from selectllm_local.run.pipeline import select_run

    pool, planned_dir, _ = planned
    shutil.copytree(planned_dir, run_dir, ignore=shutil.ignore_patterns(".lock"))
    cfg = SelectConfig.of(pool=pool, budget=BUDGET, seed=SEED, model=MODEL, run_dir=run_dir, **over)
    recorder = PromptRecorder(model_dir)
    out = select_run(cfg, backend=recorder, progress=False)
    assert len(out.selected) == BUDGET and recorder.calls
    return {
        f"{name}/{c}/{i:03d}": sha(str(prompt))
        for c, call in enumerate(recorder.calls)
        for i, prompt in enumerate(call)
    }


def render_all(planned: tuple[Path, Path, str], model_dir: Path, tmp: Path) -> dict[str, str]:
    hashes: dict[str, str] = {}
    for name, over in VARIANTS.items():
        hashes |= render(planned, model_dir, name, tmp / name, **over)
    for crit in OTHER_CRITERIA:
        path = REPO / "prompts" / "criteria" / crit
        got = render(planned, model_dir, f"criteria={crit}", tmp / crit, criteria=path)
        first = min(got)
        hashes[first] = got[first]
    return hashes


def compare(got: dict[str, Any], golden: dict[str, Any]) -> list[str]:
    """One line per difference: a prompt whose hash changed, or one added or gone; the plan."""
    want, have = golden.get("prompts", {}), got["prompts"]
    lines = [f"changed: {k}" for k in sorted(want.keys() & have.keys()) if want[k] != have[k]]
    lines += [f"new: {k}" for k in sorted(have.keys() - want.keys())]
    lines += [f"gone: {k}" for k in sorted(want.keys() - have.keys())]
    if lines and golden.get("plan") != got["plan"]:
        lines.insert(
            0, "the plan changed too (embedding, clustering or subsets): every prompt moves"
        )
    return lines


def record(planned: tuple[Path, Path, str], hashes: dict[str, str]) -> dict[str, Any]:
    return {
        "about": "sha256 of each prompt the example run sends (tests/selection/"
        "test_prompt_golden.py); regenerate: SELECTLLM_REGEN_GOLDEN=1 python -m pytest "
        "tests/selection/test_prompt_golden.py",
        "run": {
            "pool": f"first {ROWS} rows of examples/dolly_sample_1500.jsonl",
            "budget": BUDGET,
            "seed": SEED,
            "model": MODEL,
        },  # fmt: skip
        "plan": planned[2],
        "prompts": hashes,
    }


def test_every_prompt_of_the_example_run_is_unchanged(
    planned: tuple[Path, Path, str], smollm2_dir: Path, tmp_path: Path
) -> None:
    got = record(planned, render_all(planned, smollm2_dir, tmp_path))
    if os.environ.get("SELECTLLM_REGEN_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n", "utf-8")
    assert GOLDEN.exists(), f"{GOLDEN} is missing: regenerate it (see this module's docstring)"
    diff = compare(got, json.loads(GOLDEN.read_text("utf-8")))
    assert not diff, (
        f"{len(diff)} prompt(s) of the example run changed; if on purpose, regenerate "
        "(see this module's docstring):\n" + "\n".join(diff[:20])
    )


def test_one_word_changed_in_the_template_is_seen(
    planned: tuple[Path, Path, str],
    smollm2_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The comparison is not blind: one word edited in the shipped ids template changes every
    generate-mode prompt, and leaves the --reasons prompts (another template) as recorded."""
    from selectllm_local.selection import prompts as prompting

    golden = json.loads(GOLDEN.read_text("utf-8"))
    edited = tmp_path / "prompts"
    shutil.copytree(prompting.prompts_dir(), edited)
    ids = edited / prompting.DEFAULT_TEMPLATE
    text = ids.read_text("utf-8")
    assert text.count("small, high-quality training set") == 1
    ids.write_text(text.replace("small, high-quality", "small, top-quality"), "utf-8")
    monkeypatch.setattr(prompting, "prompts_dir", lambda: edited)

    hashes = render(planned, smollm2_dir, "generate", tmp_path / "generate")
    hashes |= render(planned, smollm2_dir, "reasons", tmp_path / "reasons", reasons=True)
    names = {k.split("/")[0] for k in hashes}
    recorded = {k: v for k, v in golden["prompts"].items() if k.split("/")[0] in names}
    diff = compare({"plan": planned[2], "prompts": hashes}, {**golden, "prompts": recorded})
    generate = sorted(k for k in recorded if k.startswith("generate/"))
    assert generate and diff == [f"changed: {k}" for k in generate]
