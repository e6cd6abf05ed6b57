"""The candidate token store: a second run on a pool reads its units instead of tokenizing, and
builds exactly the prompts a run without the store builds.

Real tokenizers (SmolLM2-135M-Instruct's and a BPE trained on Dolly with a Llama-3 template), two
pools (the example sample and Dolly 15k rows outside it), full and cut candidates; a damaged store
and another tokenizer must each be a miss, never a wrong prompt.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from selectllm_local.bench import run as bench
from selectllm_local.data import pool as data
from selectllm_local.models import random_weights as tinymodel
from selectllm_local.selection import prompts as prompting
from selectllm_local.selection import tokencache
from selectllm_local.selection.promptids import PromptBuilder
from tests.helpers import DOLLY, EXAMPLE_POOL
from tests.selection.test_promptids import LLAMA3_STYLE, _reference, _TokenizerBackend


@pytest.fixture(scope="module")
def pools() -> dict[str, list[Any]]:
    items, _ = data.load_pool(EXAMPLE_POOL)
    sample = {it.instruction for it in items}
    other, _ = data.load_pool(DOLLY)
    fresh = [it for it in other[9000:] if it.instruction not in sample][:360]
    return {
        "example": [dataclasses.replace(it, index=i) for i, it in enumerate(items[:360])],
        "dolly-9000": [dataclasses.replace(it, index=i) for i, it in enumerate(fresh)],
    }


@pytest.fixture(scope="module")
def tokenizers(
    pools: dict[str, list[Any]], smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Each loaded from its folder, as the backends load a model's tokenizer."""
    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp("tok")
    texts = [data.embedding_text(it) for it in pools["example"]]
    tinymodel.build_tokenizer(tmp / "pool", vocab_size=4000, texts=texts)
    dolly = AutoTokenizer.from_pretrained(tmp / "pool")
    dolly.chat_template = LLAMA3_STYLE
    smol = AutoTokenizer.from_pretrained(str(smollm2_dir), local_files_only=True)
    return {"smollm2": smol, "dolly-bpe": dolly}


def _builder(rows: list[Any], tok: Any, mode: str, root: Path | None) -> PromptBuilder:
    backend = _TokenizerBackend(tok)
    return PromptBuilder(
        prompting.PromptTemplate.load(), rows, backend, special_tokens=backend.special_tokens,
        count_tokens=backend.count_tokens, mode=mode, store_root=root,
    )  # fmt: skip


def _prompts(builder: PromptBuilder, plan: Any, budget: int, mode: str) -> list[Any]:
    builder.prepare([i for s in plan.subsets for i in s.candidates], budget)
    labels = prompting.LETTER_LABELS[:12] if mode == "logprobs" else None
    return [builder.build(s, labels, budget) for s in plan.subsets]


@pytest.mark.parametrize("pool", ["example", "dolly-9000"])
@pytest.mark.parametrize("budget", [256, 48])
def test_a_second_run_reads_every_unit_and_builds_the_same_prompts(
    pool: str, budget: int, pools: dict[str, list[Any]], tokenizers: dict[str, Any],
    tmp_path: Path,
) -> None:  # fmt: skip
    rows = pools[pool]
    plan = bench.strided_plan(30, 12, 1)
    distinct = len({i for s in plan.subsets for i in s.candidates})
    for name, tok in tokenizers.items():
        root = tmp_path / name
        cold = _builder(rows, tok, "ids", root)
        first = _prompts(cold, plan, budget, "ids")
        assert cold.store is not None and cold.store.hits == 0, name
        warm = _builder(rows, tok, "logprobs", root)  # another mode: the same units
        warm_ids = _builder(rows, tok, "ids", root)
        second = _prompts(warm_ids, plan, budget, "ids")
        lp = _prompts(warm, plan, budget, "logprobs")
        assert warm_ids.store is not None and warm_ids.store.hits == distinct, name
        assert warm_ids.store.misses == 0 and not warm_ids._raw_ids, name  # nothing tokenized
        cut = 0
        for s, a, b, c in zip(plan.subsets, first, second, lp, strict=True):
            want = _reference(cold.template, warm_ids.backend, s, rows, budget, None, "ids")
            assert str(a) == str(b) == str(want), (name, s.id)
            assert a.token_ids == b.token_ids == want.token_ids, (name, s.id)
            labels = prompting.LETTER_LABELS[:12]
            want_lp = _reference(cold.template, warm.backend, s, rows, budget, labels, "logprobs")
            assert c.token_ids == want_lp.token_ids, (name, s.id)
            cut += " [...]" in b
        if budget == 48:
            assert cut >= len(plan.subsets) // 2, name  # cut units came from the store too
        # every stored unit is the tokenizer's own ids of its (cut) text and the newline
        for (idx, b), (text, _cut, ids) in list(warm_ids._units.items())[:50]:
            assert b == budget
            assert ids == tok.encode(text + "\n", add_special_tokens=False), (name, idx)


def test_a_damaged_store_is_a_miss_and_is_written_again(
    pools: dict[str, list[Any]], tokenizers: dict[str, Any], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    rows, tok = pools["example"], tokenizers["smollm2"]
    plan = bench.strided_plan(10, 12, 1)
    first = _prompts(_builder(rows, tok, "ids", tmp_path), plan, 64, "ids")
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    index = folder / "b64.json"
    (npy,) = folder.glob("b64-*.npy")
    npy.write_bytes(npy.read_bytes()[:100])  # a torn array
    with caplog.at_level(logging.WARNING, logger="selectllm_local.selection.tokencache"):
        again = _builder(rows, tok, "ids", tmp_path)
        second = _prompts(again, plan, 64, "ids")
    assert "ignoring the candidate token store's b64 entry" in caplog.text
    assert again.store is not None and again.store.hits == 0
    assert [p.token_ids for p in first] == [p.token_ids for p in second]
    name = json.loads(index.read_text("utf-8"))["data"]
    assert name != npy.name and (folder / name).is_file() and not npy.exists()
    third = _builder(rows, tok, "ids", tmp_path)
    _prompts(third, plan, 64, "ids")
    assert third.store is not None and third.store.hits > 0 and third.store.misses == 0


def test_the_fingerprint_follows_the_tokenizer_and_the_defused_specials(
    tokenizers: dict[str, Any], smollm2_dir: Path
) -> None:
    from transformers import AutoTokenizer

    def fp(tok: Any, special: list[str]) -> str | None:
        return tokencache.fingerprint(tok, tok.backend_tokenizer, special, "\n")

    smol, dolly = tokenizers["smollm2"], tokenizers["dolly-bpe"]
    again = AutoTokenizer.from_pretrained(str(smollm2_dir), local_files_only=True)
    assert fp(smol, ["<|im_end|>"]) == fp(again, ["<|im_end|>"])  # the same content
    assert fp(smol, ["<|im_end|>"]) != fp(dolly, ["<|im_end|>"])
    assert fp(smol, ["<|im_end|>"]) != fp(smol, ["<|im_end|>", "<x>"])
    again.add_tokens(["zzqq"])  # changed in memory: the file alone would not tell
    assert fp(again, ["<|im_end|>"]) != fp(smol, ["<|im_end|>"])


def test_the_store_is_off_when_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(tokencache.ENV, "off")
    assert tokencache.default_root() is None
    monkeypatch.setenv(tokencache.ENV, str(tmp_path))
    assert tokencache.default_root() == tmp_path
    monkeypatch.delenv(tokencache.ENV)
    assert tokencache.default_root() == Path.home() / ".cache" / "selectllm-local" / "tokens"


def test_an_edit_to_the_cutting_code_makes_a_new_store(
    tokenizers: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Units stored by other cutting code are never read: the modules' source is fingerprinted."""
    tok = tokenizers["smollm2"]
    base = tokencache.fingerprint(tok, tok.backend_tokenizer, [], "\n")
    code = tmp_path / "selection"
    code.mkdir()
    for name in tokencache._CUTTING_CODE:
        (code / name).write_bytes((Path(tokencache.__file__).parent / name).read_bytes())
    monkeypatch.setattr(tokencache, "__file__", str(code / "tokencache.py"))
    assert tokencache.fingerprint(tok, tok.backend_tokenizer, [], "\n") == base
    with open(code / "prompts.py", "a", encoding="utf-8") as fh:
        fh.write("\n# a changed cut\n")
    assert tokencache.fingerprint(tok, tok.backend_tokenizer, [], "\n") != base
