"""Prompts assembled from once-tokenized pieces equal tokenizing the rendered prompt, token for token.

Real trained tokenizers (the tests' tiny BPE and a BPE trained on Dolly) with the ChatML template
and a Llama-3-style template (BOS and header special tokens), on real Dolly rows, with and without
candidates being cut; a SentencePiece-style tokenizer, where seams are not safe, must be caught
by the builder's own check and fall back to whole-prompt tokenization.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from selectllm_local.backends.base import TokenizedPrompt, prompt_token_ids
from selectllm_local.bench import run as bench
from selectllm_local.data import pool as data
from selectllm_local.models import random_weights as tinymodel
from selectllm_local.selection import prompts as prompting
from selectllm_local.selection.promptids import PromptBuilder
from tests.helpers import EXAMPLE_POOL

LLAMA3_STYLE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


class _TokenizerBackend:
    """Just the prompt side of a backend (render + count) over a real tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.special_tokens = sorted(
            set(tokenizer.all_special_tokens)
            | {str(t) for t in tokenizer.added_tokens_decoder.values()}
        )

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))


@pytest.fixture(scope="module")
def rows() -> list[Any]:
    items, _ = data.load_pool(EXAMPLE_POOL)
    return [dataclasses.replace(it, index=i) for i, it in enumerate(items[:480])]


@pytest.fixture(scope="module")
def tokenizers(rows: list[Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("tok")
    tiny = tinymodel.build_tokenizer(tmp / "tiny")
    texts = [data.embedding_text(it) for it in rows]
    llama = tinymodel.build_tokenizer(tmp / "pool", vocab_size=4000, texts=texts)
    llama.add_special_tokens(
        {
            "additional_special_tokens": [
                "<|begin_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
            ]
        }  # fmt: skip
    )
    llama.bos_token = "<|begin_of_text|>"
    llama.chat_template = LLAMA3_STYLE
    return {"tiny-chatml": tiny, "dolly-bpe-llama3-template": llama}


def _reference(tpl: Any, backend: Any, subset: Any, rows: list[Any], budget: int, labels: Any,
               mode: str) -> TokenizedPrompt:  # fmt: skip
    messages = prompting.render_messages(
        tpl, subset, rows, max_candidate_tokens=budget, count_tokens=backend.count_tokens,
        labels=labels, mode=mode, special_tokens=backend.special_tokens,
    )  # fmt: skip
    text = backend.render_chat(messages)
    return TokenizedPrompt(text, backend.tokenizer.encode(text, add_special_tokens=False))


@pytest.mark.parametrize("kind", ["tiny-chatml", "dolly-bpe-llama3-template"])
@pytest.mark.parametrize("mode", ["ids", "logprobs"])
@pytest.mark.parametrize("budget", [256, 40])
def test_fast_ids_equal_tokenizing_the_rendered_prompt(
    kind: str, mode: str, budget: int, rows: list[Any], tokenizers: dict[str, Any]
) -> None:
    backend = _TokenizerBackend(tokenizers[kind])
    tpl = prompting.PromptTemplate.load()
    plan = bench.strided_plan(40, 12, 2)
    builder = PromptBuilder(
        tpl, rows, backend, special_tokens=backend.special_tokens,
        count_tokens=backend.count_tokens, mode=mode,
    )  # fmt: skip
    builder.prepare([i for s in plan.subsets for i in s.candidates], budget)
    labels = prompting.LETTER_LABELS[:12] if mode == "logprobs" else None
    cut = 0
    for s in plan.subsets:
        got = builder.build(s, labels, budget)
        want = _reference(tpl, backend, s, rows, budget, labels, mode)
        assert str(got) == str(want)
        assert got.token_ids == want.token_ids
        cut += " [...]" in got
    assert builder.enabled and builder.built["fast"] == len(plan.subsets)
    if budget == 40:
        assert cut >= len(plan.subsets) // 2  # most prompts had cut candidates: truncation ran
        # cut candidates' counts and ids were derived from their own tokens, and every checked
        # one matched the tokenizer (a mismatch sets -1)
        assert builder._derive_checks == 0


def test_unsafe_seams_are_caught_and_fall_back(rows: list[Any], tmp_path: Path) -> None:
    """A SentencePiece-style tokenizer (a word-start marker before every piece) can merge across
    a newline seam; the builder's check must notice and send whole-prompt ids instead."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=False)
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<unk>", "<|im_end|>"],
                                  show_progress=False)  # fmt: skip
    tok.train_from_iterator([data.embedding_text(it) for it in rows] + ["\n<x>\n"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>")
    fast.chat_template = tinymodel.CHAT_TEMPLATE
    backend = _TokenizerBackend(fast)
    tpl = prompting.PromptTemplate.load()
    plan = bench.strided_plan(5, 12, 2)
    builder = PromptBuilder(
        tpl, rows, backend, special_tokens=backend.special_tokens,
        count_tokens=backend.count_tokens, mode="ids",
    )  # fmt: skip
    for s in plan.subsets:
        got = builder.build(s, None, 256)
        want = _reference(tpl, backend, s, rows, 256, None, "ids")
        assert got.token_ids == want.token_ids
    assert not builder.enabled  # the first prompt's check switched the fast path off


def test_templates_showing_other_candidate_fields_use_the_plain_path(
    rows: list[Any], tokenizers: dict[str, Any], tmp_path: Path
) -> None:
    src = prompting.prompts_dir() / prompting.DEFAULT_TEMPLATE
    custom = tmp_path / "t.j2"
    custom.write_text(src.read_text().replace("{{ c.text }}", "{{ c.text }}{{ ' (cut)' if c.truncated }}"))  # fmt: skip
    tpl = prompting.PromptTemplate.load(custom)
    backend = _TokenizerBackend(tokenizers["tiny-chatml"])
    builder = PromptBuilder(
        tpl, rows, backend, special_tokens=backend.special_tokens,
        count_tokens=backend.count_tokens, mode="ids",
    )  # fmt: skip
    s = bench.strided_plan(4, 12, 2).subsets[0]
    got = builder.build(s, None, 40)
    assert got.token_ids == _reference(tpl, backend, s, rows, 40, None, "ids").token_ids
    assert "(cut)" in got and builder.built == {"fast": 0, "plain": 1, "verified": 0}


def test_backends_take_carried_ids_and_tokenize_plain_text(tokenizers: dict[str, Any]) -> None:
    tok = tokenizers["tiny-chatml"]
    assert prompt_token_ids(TokenizedPrompt("abc", [7, 8, 9]), tok) == [7, 8, 9]
    assert prompt_token_ids("abc", tok) == tok.encode("abc", add_special_tokens=False)


@pytest.mark.parametrize("reasons", [False, True])
def test_each_subset_keeps_its_own_answer_example(
    reasons: bool, rows: list[Any], tokenizers: dict[str, Any]
) -> None:
    """The answer example differs per subset (issue 8) and is not frozen into the skeleton; the
    increasing-order wording and the run seed reach the fast path as they reach the plain one."""
    backend = _TokenizerBackend(tokenizers["dolly-bpe-llama3-template"])
    tpl = prompting.PromptTemplate.load(reasons=reasons)
    plan = bench.strided_plan(12, 12, 3)
    builder = PromptBuilder(
        tpl, rows, backend, special_tokens=backend.special_tokens,
        count_tokens=backend.count_tokens, mode="ids", seed=7, ordered=lambda s: True,
    )  # fmt: skip
    examples = set()
    for s in plan.subsets:
        got = builder.build(s, None, 256)
        messages = prompting.render_messages(
            tpl, s, rows, max_candidate_tokens=256, count_tokens=backend.count_tokens,
            special_tokens=backend.special_tokens, ordered=True, seed=7,
        )  # fmt: skip
        want = backend.render_chat(messages)
        assert str(got) == want
        assert got.token_ids == backend.tokenizer.encode(want, add_special_tokens=False)
        example = prompting.subset_example(tpl, s, seed=7, ordered=True)
        assert example in got and "increasing order" in got
        examples.add(example)
    assert builder.enabled and builder.built["fast"] == len(plan.subsets)
    assert len(examples) > len(plan.subsets) // 2  # not one example for every prompt


@pytest.fixture(scope="module")
def other_rows() -> list[Any]:
    """A second pool the builder was not tuned on: Dolly 15k rows outside the example sample."""
    from tests.helpers import DOLLY

    items, _ = data.load_pool(DOLLY)
    sample = {it.instruction for it in data.load_pool(EXAMPLE_POOL)[0]}
    fresh = [it for it in items[9000:] if it.instruction not in sample][:480]
    return [dataclasses.replace(it, index=i) for i, it in enumerate(fresh)]


@pytest.mark.parametrize("pool", ["example", "dolly-9000"])
@pytest.mark.parametrize("mode", ["ids", "logprobs"])
@pytest.mark.parametrize("budget", [256, 48])
def test_fast_ids_equal_the_slow_path_on_real_tokenizers(
    pool: str, mode: str, budget: int, rows: list[Any], other_rows: list[Any],
    tokenizers: dict[str, Any], smollm2_dir: Path,
) -> None:  # fmt: skip
    """Real SmolLM2 tokenizer and the Dolly BPE with a Llama-3 template, on two pools: every
    prompt assembled from cached pieces (candidates tokenized once, counts and ids of cut ones
    derived from their own tokens) equals rendering the prompt and tokenizing it whole."""
    from transformers import AutoTokenizer

    pool_rows = rows if pool == "example" else other_rows
    smol = AutoTokenizer.from_pretrained(str(smollm2_dir), local_files_only=True)
    tpl = prompting.PromptTemplate.load()
    plan = bench.strided_plan(40, 12, 1)
    for name, tok in [("smollm2", smol), ("dolly-bpe", tokenizers["dolly-bpe-llama3-template"])]:
        backend = _TokenizerBackend(tok)
        builder = PromptBuilder(
            tpl, pool_rows, backend, special_tokens=backend.special_tokens,
            count_tokens=backend.count_tokens, mode=mode,
        )  # fmt: skip
        builder.prepare([i for s in plan.subsets for i in s.candidates], budget)
        labels = prompting.LETTER_LABELS[:12] if mode == "logprobs" else None
        cut = 0
        for s in plan.subsets:
            got = builder.build(s, labels, budget)
            want = _reference(tpl, backend, s, pool_rows, budget, labels, mode)
            assert str(got) == str(want), name
            assert got.token_ids == want.token_ids, (name, s.id)
            cut += " [...]" in got
        # the fast path served every prompt, and no derived count or id was ever wrong
        assert builder.enabled and builder.built["fast"] == len(plan.subsets), name
        assert builder._derive_checks >= 0, name
        if budget == 48:
            assert cut >= len(plan.subsets) // 2, name  # truncation and derivation really ran
            assert builder._derive_checks == 0 and builder._id_checks == 0, name


def _smollm2_builder(smollm2_dir: Path, rows: list[Any]) -> tuple[Any, PromptBuilder]:
    """The real SmolLM2 tokenizer and an ids-mode prompt builder over ``rows``."""
    from transformers import AutoTokenizer

    smol = AutoTokenizer.from_pretrained(str(smollm2_dir), local_files_only=True)
    backend = _TokenizerBackend(smol)
    builder = PromptBuilder(
        prompting.PromptTemplate.load(), rows, backend,
        special_tokens=backend.special_tokens, count_tokens=backend.count_tokens, mode="ids",
    )  # fmt: skip
    return smol, builder


def test_summed_byte_ends_split_text_where_the_tokenizers_offsets_do(
    other_rows: list[Any], smollm2_dir: Path
) -> None:
    """The token ends summed from byte lengths (no offsets asked of the tokenizer) put every word
    boundary of a text, accented and typographic characters included, after exactly the tokens
    the tokenizer's own character offsets put there."""
    import bisect

    from selectllm_local.selection.candidateids import _boundary, _byte_offset

    smol, builder = _smollm2_builder(smollm2_dir, other_rows)
    texts = [prompting.candidate_text(it) + "\n" for it in other_rows]
    texts = [t for t in texts if not t.isascii()][:60]
    assert len(texts) >= 20  # the pool has non-ASCII text to try
    offsets = smol.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    summed = builder._encode_ends(texts, None)
    boundaries = 0
    for text, enc, (ids, ends) in zip(texts, offsets, summed, strict=True):
        assert ids == enc.ids and ends is not None and len(ends) == len(ids)
        char_ends = [end for _start, end in enc.offsets]
        for b in range(1, len(text) - 1):
            if _boundary(text, b):
                boundaries += 1
                got = bisect.bisect_right(ends, _byte_offset(text, b))
                assert got == bisect.bisect_right(char_ends, b), (text[:60], b)
    assert boundaries > 1000


def test_a_prefix_is_counted_from_its_last_word_boundary_past_numbers_and_spaces(
    other_rows: list[Any], smollm2_dir: Path
) -> None:
    """A cut prefix's count is its text's own tokens up to the last word boundary plus the rest
    tokenized: also where the prefix ends in a space or its last space precedes a number (the
    boundary is then an earlier one), equal to tokenizing the prefix whole."""
    from selectllm_local.selection.candidateids import _boundary

    _smol, builder = _smollm2_builder(smollm2_dir, other_rows)
    texts = [t for t in (prompting.candidate_text(it) for it in other_rows) if len(t) > 600][:60]
    derived = earlier = 0
    for text, (ids, ends) in zip(texts, builder._encode_ends(texts, None), strict=True):
        assert ends is not None
        for n in range(60, len(text) - 1, 29):
            ask = text[:n]
            split = builder._split((text, ids, ends), ask)
            if split is None:
                continue
            head, tail = split
            assert head + len(builder._encode_rust([tail])[0]) == len(
                builder._encode_rust([ask])[0]
            )
            derived += 1
            last = ask.rfind(" ", 0, n - 1)
            earlier += not _boundary(ask, last)  # the last space was not a boundary
    assert derived > 500 and earlier > 50, (derived, earlier)


def test_single_token_letters_from_one_batched_call_equal_counting_each(
    tokenizers: dict[str, Any], smollm2_dir: Path
) -> None:
    """Logprob mode's labels, read in one batched tokenizer call, are the letters that
    ``count_tokens`` finds to be one token, on three real tokenizers."""
    from transformers import AutoTokenizer

    from selectllm_local.selection.rounds import _single_token_labels

    smol = AutoTokenizer.from_pretrained(str(smollm2_dir), local_files_only=True)
    for tok in [smol, *tokenizers.values()]:
        backend = _TokenizerBackend(tok)
        want = [lab for lab in prompting.LETTER_LABELS if backend.count_tokens(lab) == 1]
        assert _single_token_labels(backend) == want  # type: ignore[arg-type]
        assert 2 <= len(want)
