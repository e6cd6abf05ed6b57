"""The whole-token table: a pre-token that the BPE model gives back as one token takes its id
without ``tokenize``, and the ids stay exactly the tokenizer's.

A tokenizer trained on the example pool and the tests' tiny one, on Dolly rows and seeded random
strings; a hand-made BPE whose merges never rebuild one of its tokens (the case the table is
for); the table kept in the candidate token store, read by the next run, rebuilt when damaged,
and deleted when the encoder it served disagrees with the tokenizer.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest

from selectllm_local.data import pool as data
from selectllm_local.models import random_weights as tinymodel
from selectllm_local.selection import pieces as pieces_mod
from selectllm_local.selection import wholetokens
from selectllm_local.selection.candidateids import CandidateTokens
from selectllm_local.selection.pieces import PieceEncoder
from tests.helpers import EXAMPLE_POOL
from tests.selection.test_pieces import EDGES, UNICODE, _dolly_texts, _fuzz, _reference


def _unreachable_bpe() -> Any:
    """A byte-level BPE in which "abc" is a token that its merges never make: "bc" merges
    first, and no merge joins "a" with "bc"."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for tok in ("bc", "ab", "abc", "\u0120a"):
        vocab[tok] = len(vocab)
    merges = [("b", "c"), ("a", "b"), ("ab", "c"), ("\u0120", "a")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return tok


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("whole")
    items, _ = data.load_pool(EXAMPLE_POOL)
    texts = [data.embedding_text(it) for it in items[:800]]
    return {
        "tiny": tinymodel.build_tokenizer(tmp / "tiny"),
        "pool": tinymodel.build_tokenizer(tmp / "pool", vocab_size=6000, texts=texts),
        "unreachable": _unreachable_bpe(),
    }


def _rust(tok: Any) -> Any:
    return getattr(tok, "backend_tokenizer", tok)


def test_the_table_marks_exactly_the_tokens_the_model_gives_back_whole(
    tokenizers: dict[str, Any],
) -> None:
    for kind, tok in tokenizers.items():
        fast = _rust(tok)
        table = wholetokens.build(fast)
        assert len(table.whole) == fast.get_vocab_size(with_added_tokens=False), kind
        for token, tid in fast.get_vocab(with_added_tokens=False).items():
            whole = [t.id for t in fast.model.tokenize(token)] == [tid]
            assert table.whole[tid] == whole, (kind, token)
            assert table.lengths[tid] == len(token)  # one character per byte
    fast = tokenizers["unreachable"]
    table = wholetokens.build(fast).whole
    vocab = fast.get_vocab()
    assert [fast.id_to_token(t) for t in fast.encode("abc", add_special_tokens=False).ids] == [
        "a",
        "bc",
    ]
    assert table[vocab["abc"]] == 0 and table[vocab["ab"]] == table[vocab["bc"]] == 1


@pytest.mark.parametrize("kind", ["tiny", "pool", "unreachable"])
def test_ids_with_the_table_equal_the_tokenizers_and_only_split_pieces_are_tokenized(
    tokenizers: dict[str, Any], kind: str
) -> None:
    tok = tokenizers[kind]
    enc = PieceEncoder.for_tokenizer(tok)
    assert enc is not None
    table = wholetokens.build(_rust(tok)).whole
    enc.use_whole(table)
    calls: list[str] = []
    tokenize = enc._ids._tokenize
    enc._ids._tokenize = lambda raw: calls.append(raw) or tokenize(raw)  # type: ignore[method-assign]
    texts = _dolly_texts(600, seed=11) + _fuzz(5, 1500, EDGES + UNICODE + ["abc", " abc", "ab"])
    got, taken = enc.encode(texts, lambda ts: _reference(tok, ts))
    assert got == _reference(tok, texts)
    assert len(taken) > len(texts) // 2
    # tokenize was asked for exactly the pre-tokens that are not whole tokens, once each
    from tokenizers import pre_tokenizers

    model = _rust(tok).model
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raws = ["".join(w for w, _ in byte_level.pre_tokenize_str(p)) for p in enc._ids]
    split = [r for r in raws if not ((t := model.token_to_id(r)) is not None and table[t])]
    assert sorted(calls) == sorted(split)
    assert 0 < len(calls) < len(raws), (len(calls), len(raws))  # some whole, some not
    if kind == "unreachable":  # "abc" is in the vocabulary but not whole: it went to tokenize
        assert "abc" in calls


def _units(tok: Any, items: list[Any], root: Path | None) -> tuple[CandidateTokens, list[Any]]:
    cands = CandidateTokens(
        items, [], tok.backend_tokenizer, True, tokenizer=tok, store_root=root, pieces=True
    )
    cands.prepare(list(range(len(items))), 64)
    return cands, [cands._units[(i, 64)] for i in range(len(items))]


def test_the_table_is_kept_beside_the_store_read_by_the_next_run_and_rebuilt_when_damaged(
    tokenizers: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok = tokenizers["pool"]
    items, _ = data.load_pool(EXAMPLE_POOL)
    items = [dataclasses.replace(it, index=i) for i, it in enumerate(items[:150])]
    _cands, want = _units(tok, items, None)  # no store, no table
    first, got = _units(tok, items, tmp_path)
    assert got == want
    assert first.store is not None and first._pieces is not None and first._pieces._ids.whole
    kept = list(first.store.folder.glob("whole-*.npy"))
    assert len(kept) == 1

    def no_build(fast: Any) -> bytes:
        raise AssertionError("the kept table was not read")

    with monkeypatch.context() as m:  # the next run on another pool reads it
        m.setattr(wholetokens, "build", no_build)
        second, got = _units(tok, items[::-1][:100], tmp_path)
        assert got == want[::-1][:100]
        assert second._pieces is not None and second._pieces._ids.whole == first._pieces._ids.whole
        assert (second._token_lengths == first._token_lengths).all()

    data_ = bytearray(kept[0].read_bytes())  # a damaged table: its bytes no longer its name's
    data_[-1] ^= 1
    kept[0].write_bytes(bytes(data_))
    built: list[int] = []
    real = wholetokens.build
    monkeypatch.setattr(wholetokens, "build", lambda fast: built.append(1) or real(fast))
    third, got = _units(tok, items[:50], tmp_path)
    assert built == [1] and got == want[:50]
    assert third._pieces is not None and third._pieces._ids.whole == first._pieces._ids.whole


def test_a_table_whose_encoder_differs_from_the_tokenizer_is_deleted(
    tokenizers: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    tok = tokenizers["pool"]
    items, _ = data.load_pool(EXAMPLE_POOL)
    items = [dataclasses.replace(it, index=i) for i, it in enumerate(items[:80])]
    _cands, want = _units(tok, items, None)
    # a table that calls split tokens whole: some words get wrong ids
    fast = tok.backend_tokenizer
    right = wholetokens.build(fast)
    wrong = wholetokens.Table(bytes([1]) * len(right.whole), right.lengths)
    monkeypatch.setattr(wholetokens, "build", lambda f: wrong)
    monkeypatch.setattr(pieces_mod._PieceIds, "add", _whole_even_if_not(fast))
    with caplog.at_level(logging.INFO, logger="selectllm_local.selection.promptids"):
        bad, got = _units(tok, items, tmp_path)
    assert "pre-token encoder differs" in caplog.text
    assert bad._pieces is None and got == want
    assert bad.store is not None and not list(bad.store.folder.glob("whole-*.npy"))


def _whole_even_if_not(fast: Any) -> Any:
    """An ``add`` that gives every two-letter word (" me", "is") one id too many: wrong ids, as
    a table that calls a split token whole would give."""
    real = pieces_mod._PieceIds.add

    def add(self: Any, pieces: set[str]) -> None:
        real(self, pieces)
        for piece in pieces:
            word = piece.strip()
            if len(word) == 2 and word.isascii() and word.isalpha() and len(self[piece]) == 1:
                self[piece] = self[piece] * 2

    return add
