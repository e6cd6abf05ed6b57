"""The pre-token encoder gives exactly the tokenizer's ids, or leaves the text to the tokenizer.

Real tokenizers of every split it accepts (the tests' tiny BPE and a Dolly-trained BPE, both
with digits isolated; GPT-2's plain ByteLevel split; a Llama-3-style Split pattern; the real
SmolLM2 tokenizer), on two real text sets (the shipped Dolly pool and the paper's Dolly test
answers, which the code was not tuned on) and on seeded random strings over an alphabet chosen
to hit the split's edges: contractions, runs of spaces before digits and letters, newlines,
accents, CJK, emoji, combining marks, non-ASCII digits and spaces. Each comparison is with the
tokenizer's own batched encoding.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import logging
import random
from pathlib import Path
from typing import Any

import pytest

from selectllm_local.data import pool as data
from selectllm_local.models import random_weights as tinymodel
from selectllm_local.selection import pieces as pieces_mod
from selectllm_local.selection.candidateids import CandidateTokens
from selectllm_local.selection.pieces import PieceEncoder
from tests.helpers import DOLLY, DOLLY_TESTSET, EXAMPLE_POOL

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
EDGES = list("aZb  \n\t\r'sltdrevm09,.-!?_\"") + ["'ll", "'re", "  ", "\n\n", " 12", "'S"]
UNICODE = list(
    "éüßñçøÅ’“”–—…\u00a0\u2028\u2029\u3000\u2003中文日本語한국어٣½Ⅻ²\u0301\u0308😀👍🏽€£¥°"
)
# letters with an ASCII case partner: the long s, the Kelvin sign, dotted and dotless i
CASE_PARTNERS = list("\u017f\u212a\u0130\u0131")
LEFT_TO_TOKENIZER = ["\x00", "\x0b", "\x0c", "\x1c", "\x7f"]  # ASCII controls
# classed by the tokenizer's own engine like any other character: a C1 control, the byte-order
# mark, a private-use character, zero-width space and joiner, an unassigned code point
TAKEN_TOO = ["\x85", "\ufeff", "\ue000", "\u200b", "\u200d", "\U000e0080"]


def _fuzz(seed: int, n: int, alphabet: list[str]) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(n)]


@functools.cache
def _dolly_rows() -> list[dict[str, str]]:
    with gzip.open(DOLLY, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _dolly_texts(n: int, seed: int) -> list[str]:
    rows = random.Random(seed).sample(_dolly_rows(), n)
    return [f"{r['instruction']}\n\nInput:\n{r['context']}\n{r['response']}" for r in rows]


def _testset_texts() -> list[str]:
    return [str(t) for t in json.loads((DOLLY_TESTSET / "test_gts.json").read_text("utf-8"))]


def _rust(tok: Any) -> Any:
    return getattr(tok, "backend_tokenizer", tok)


def _reference(tok: Any, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in _rust(tok).encode_batch(texts, add_special_tokens=False)]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers

    tmp = tmp_path_factory.mktemp("pieces")
    items, _ = data.load_pool(EXAMPLE_POOL)
    texts = [data.embedding_text(it) for it in items[:800]]
    tiny = tinymodel.build_tokenizer(tmp / "tiny")
    pool = tinymodel.build_tokenizer(tmp / "pool", vocab_size=6000, texts=texts)
    gpt2 = Tokenizer.from_file(str(tmp / "pool" / "tokenizer.json"))
    gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    llama = Tokenizer.from_file(str(tmp / "pool" / "tokenizer.json"))
    llama.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    qwen = Tokenizer.from_file(str(tmp / "pool" / "tokenizer.json"))
    qwen.normalizer = normalizers.NFC()
    qwen.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return {
        "tiny": tiny,
        "dolly-bpe": pool,
        "gpt2-split": gpt2,
        "llama3-split": llama,
        "qwen2-split-nfc": qwen,
    }


@pytest.mark.parametrize(
    "kind", ["tiny", "dolly-bpe", "gpt2-split", "llama3-split", "qwen2-split-nfc"]
)
def test_piece_ids_equal_the_tokenizers_on_two_text_sets_and_random_strings(
    tokenizers: dict[str, Any], kind: str
) -> None:
    tok = tokenizers[kind]
    enc = PieceEncoder.for_tokenizer(tok)
    assert enc is not None, kind
    dolly, answers = _dolly_texts(2000, seed=7), _testset_texts()
    fuzz = _fuzz(1, 4000, EDGES) + _fuzz(2, 4000, EDGES + UNICODE + CASE_PARTNERS + TAKEN_TOO)
    for name, texts in [("dolly", dolly), ("test answers", answers), ("random", fuzz)]:
        fallback: list[str] = []

        def rust(ts: list[str], seen: list[str] = fallback, tok: Any = tok) -> list[list[int]]:
            seen.extend(ts)
            return _reference(tok, ts)

        got, taken = enc.encode(texts, rust)
        assert len(taken) + len(fallback) == len(texts)
        want = _reference(tok, texts)
        bad = [t for t, g, w in zip(texts, got, want, strict=True) if g != w]
        assert not bad, f"{kind}, {name}: {len(bad)} texts differ, e.g. {bad[0]!r}"
        # the encoder itself handled (nearly) all real texts: the test is not of the fallback
        assert name == "random" or len(fallback) <= 0.01 * len(texts), (kind, len(fallback))
    # a second pass reads every pre-token from the table and still agrees
    assert enc.encode(dolly[:200], lambda ts: _reference(tok, ts))[0] == _reference(
        tok, dolly[:200]
    )


def test_piece_ids_equal_the_real_smollm2_tokenizer(smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    enc = PieceEncoder.for_tokenizer(tok)
    assert enc is not None
    texts = _dolly_texts(1500, seed=3) + _testset_texts() + _fuzz(4, 2000, EDGES + UNICODE)
    assert enc.encode(texts, lambda ts: _reference(tok, ts))[0] == _reference(tok, texts)


def test_texts_with_unsure_characters_or_added_tokens_go_to_the_tokenizer(
    tokenizers: dict[str, Any],
) -> None:
    tok = tokenizers["tiny"]
    enc = PieceEncoder.for_tokenizer(tok)
    assert enc is not None
    unsure = [f"a{c}b 12" for c in LEFT_TO_TOKENIZER] + ["say <|im_end|> now", "x<|endoftext|>"]
    plain = ["plain words 12", "café ½ 中文"] + [f"a{c}b 12 {c}" for c in TAKEN_TOO]
    asked: list[str] = []

    def rust(ts: list[str]) -> list[list[int]]:
        asked.extend(ts)
        return _reference(tok, ts)

    assert enc.encode(unsure + plain, rust)[0] == _reference(tok, unsure + plain)
    assert asked == unsure
    assert [enc.takes(t) for t in unsure + plain] == [False] * len(unsure) + [True] * len(plain)


def test_tokenizers_it_does_not_know_exactly_get_no_encoder(tokenizers: dict[str, Any]) -> None:
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    def variant(**change: Any) -> Any:
        tok = Tokenizer.from_str(_rust(tokenizers["tiny"]).to_str())
        for attr, value in change.items():
            setattr(tok, attr, value)
        return tok

    byte = pre_tokenizers.ByteLevel
    refused = {
        "lowercasing normalizer": variant(normalizer=normalizers.Lowercase()),
        "prefix space": variant(pre_tokenizer=byte(add_prefix_space=True, use_regex=True)),
        "digits kept together": variant(
            pre_tokenizer=pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=False), byte(add_prefix_space=False)]
            )
        ),
        "whitespace split": variant(pre_tokenizer=pre_tokenizers.Whitespace()),
        "sentencepiece-style": variant(pre_tokenizer=pre_tokenizers.Metaspace()),
        "no pre-tokenizer": variant(pre_tokenizer=None),
        "wordpiece model": Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")),
    }
    other_split = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(LLAMA3_SPLIT.replace("{1,3}", "{1,2}")), behavior="isolated", invert=False
            ),
            byte(add_prefix_space=False, use_regex=False),
        ]
    )
    refused["a split pattern it does not know"] = variant(pre_tokenizer=other_split)
    truncating = variant()
    truncating.enable_truncation(8)
    refused["truncation on"] = truncating
    assert {k: PieceEncoder.for_tokenizer(t) for k, t in refused.items()} == dict.fromkeys(refused)
    nfc = variant(normalizer=normalizers.NFC())
    enc = PieceEncoder.for_tokenizer(nfc)
    assert enc is not None
    # NFC changes "e" + a combining acute into "é": such a text goes to the tokenizer
    texts = ["cafe\u0301 12", "café 12", "plain"] + _fuzz(5, 2000, EDGES + UNICODE)
    assert enc.encode(texts, lambda ts: _reference(nfc, ts))[0] == _reference(nfc, texts)
    assert [enc.takes(t) for t in texts[:3]] == [False, True, True]


def test_class_form_of_a_split_pattern() -> None:
    form = pieces_mod._class_source
    assert form(r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}") == (
        r"[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]{1,3}"
    )
    for other in [r"\p{Lu}+|\s+", r"\w+", r"\d+| ?\p{L}+", r"\bx", "[’']s"]:
        assert form(other) is None, other  # no ASCII form that stays exact
    assert form(r"[\]\p{L}]x") == r"[\]A-Za-z]x"
    assert form(r"[]\p{L}]|[^]\p{N}]") == r"[]A-Za-z]|[^]0-9]"
    # the non-ASCII letters, numbers and spaces met, inside and outside classes
    assert form(r" ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", "éж", "٣", "\u3000") == (
        " ?[^\\s\u3000A-Za-zéж0-9٣]+|[\\s\u3000]+(?![^\\s\u3000])|[\\s\u3000]+"
    )
    assert form(r"[\S]x", spaces="\u3000") is None and form(r"[\S]x") == r"[\S]x"


@pytest.mark.parametrize(
    ("env", "cores", "pays"),
    [
        ({}, 2, True),
        ({}, 3, False),
        ({}, 16, False),
        ({"TOKENIZERS_PARALLELISM": "false"}, 16, True),
        ({"RAYON_NUM_THREADS": "2"}, 16, True),
        ({"RAYON_NUM_THREADS": "8"}, 2, False),
    ],
)
def test_the_encoder_is_used_where_the_rust_batch_has_few_cores(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], cores: int, pays: bool
) -> None:
    for name in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(pieces_mod.os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert pieces_mod.pays_here() is pays


# Letters and digits added in Unicode 15.0-16.0 (Kawi, Cyrillic modifier, CJK Extension I, outlined
# digits): the split must read them as the tokenizer's regex engine does, whatever Python's own
# Unicode data says (older or newer than the engine's).
RECENT = ["\U00011f04", "\U0001e030", "\U0002ebf0", "\U0001ccf5"]


def test_characters_are_classed_by_the_tokenizers_engine_not_pythons() -> None:
    """A BPE with one merge across the boundary the engine sees ("b" + the first byte of the
    new character): if the split read the character with other Unicode data than the engine, the
    merge would apply on one side only."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    alphabet = pieces_mod._byte_chars()
    vocab = {c: i for i, c in enumerate(alphabet)}
    merges = []
    for c in RECENT:
        first = alphabet[c.encode("utf-8")[0]]
        if "b" + first not in vocab:
            vocab["b" + first] = len(vocab)
            merges.append(("b", first))
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    enc = PieceEncoder.for_tokenizer(tok)
    assert enc is not None
    texts = [
        f"{pre}{c}{post}" for c in RECENT for pre in ("ab", "a b", "1b") for post in ("", "x", " 2")
    ]
    got, _ = enc.encode(texts, lambda ts: _reference(tok, ts))
    assert got == _reference(tok, texts)


def test_an_added_token_is_matched_in_its_nfc_form_under_nfc(tokenizers: dict[str, Any]) -> None:
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_str(_rust(tokenizers["qwen2-split-nfc"]).to_str())
    tok.add_tokens([AddedToken("cafe\u0301", normalized=True)])
    enc = PieceEncoder.for_tokenizer(tok)
    assert enc is not None
    texts = ["caf\u00e9", "un caf\u00e9 noir", "cafe\u0301 au lait", "plain text"]
    assert enc.encode(texts, lambda ts: _reference(tok, ts))[0] == _reference(tok, texts)
    assert [enc.takes(t) for t in texts] == [False, False, False, True]


@pytest.mark.parametrize("kind", ["dolly-bpe", "llama3-split"])
def test_characters_met_in_later_calls_join_the_pattern(
    tokenizers: dict[str, Any], kind: str
) -> None:
    """Each call classes the non-ASCII characters it meets first; the pattern is compiled again
    only when one is a letter, number or space, and every call's ids stay the tokenizer's."""
    tok = tokenizers[kind]
    enc = PieceEncoder.for_tokenizer(tok)
    assert enc is not None
    calls = [
        (["plain text 12", "it's 3 o'clock"], False),
        (["café au lait", "naïve"], True),  # new letters
        (["café — “quoted”", "café…"], False),  # punctuation only: no new compile
        (["٣ apples", "Ⅻ and ½", "x\u3000y\u2003z"], True),  # numbers, spaces
        (["日本語のテキスト", "한국어 text"], True),
        (["café 日本 ٣\u3000", "naïve — ½"], False),  # all met before
    ]
    for texts, grows in calls:
        before = enc._pattern
        assert enc.encode(texts, lambda ts: _reference(tok, ts))[0] == _reference(tok, texts)
        assert (enc._pattern is not before) == grows, texts
    assert enc._members["L"] and enc._members["N"] and enc._members["S"]


def test_case_partners_go_to_the_tokenizer_only_where_the_split_folds_case(
    tokenizers: dict[str, Any],
) -> None:
    texts = [f"it'{c} done" for c in CASE_PARTNERS] + ["straße 12"]
    folds = PieceEncoder.for_tokenizer(tokenizers["llama3-split"])
    plain = PieceEncoder.for_tokenizer(tokenizers["dolly-bpe"])
    assert folds is not None and plain is not None
    # the long s, the Kelvin sign and the dotless i have a one-letter ASCII partner; the dotted I
    # (lower case "i" + a dot) and ß ("SS") do not
    assert [folds.takes(t) for t in texts] == [False, False, True, False, True]
    assert all(plain.takes(t) for t in texts)
    for kind, enc in [("llama3-split", folds), ("dolly-bpe", plain)]:
        tok = tokenizers[kind]
        assert enc.encode(texts, lambda ts, tok=tok: _reference(tok, ts))[0] == _reference(
            tok, texts
        )


def test_a_split_that_differs_is_caught_at_the_start_of_a_run(
    tokenizers: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong split (here: whitespace-separated words) must never reach a prompt: the run's
    first texts are compared with the tokenizer and the encoder is dropped for the run."""
    from transformers import PreTrainedTokenizerFast

    tok = tokenizers["dolly-bpe"]
    assert isinstance(tok, PreTrainedTokenizerFast)
    items, _ = data.load_pool(EXAMPLE_POOL)
    items = [dataclasses.replace(it, index=i) for i, it in enumerate(items[:120])]
    indices = list(range(120))

    def units(encoder: bool) -> list[Any]:
        if not encoder:
            monkeypatch.setattr(PieceEncoder, "for_tokenizer", classmethod(lambda cls, f: None))
        cands = CandidateTokens(items, [], tok.backend_tokenizer, True, tokenizer=tok, pieces=True)
        cands.prepare(indices, 64)
        return [cands._units[(i, 64)] for i in indices]

    want = units(encoder=False)
    monkeypatch.undo()
    good = CandidateTokens(items, [], tok.backend_tokenizer, True, tokenizer=tok, pieces=True)
    assert good._pieces is not None
    good.prepare(indices, 64)
    assert [good._units[(i, 64)] for i in indices] == want and good._pieces is not None

    wrong = pieces_mod.re.compile(r"\S+|\s+")
    monkeypatch.setattr(PieceEncoder, "_pieces", lambda self, text: wrong.findall(text))
    with caplog.at_level(logging.INFO, logger="selectllm_local.selection.promptids"):
        bad = CandidateTokens(items, [], tok.backend_tokenizer, True, tokenizer=tok, pieces=True)
        bad.prepare(indices, 64)
    assert bad._pieces is None
    assert [bad._units[(i, 64)] for i in indices] == want
    assert "pre-token encoder differs" in caplog.text
