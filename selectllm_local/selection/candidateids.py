"""Candidate texts as token ids: tokenized once per run, cut to a token budget, counts derived.

A selection prompt (``promptids.PromptBuilder``) is assembled from static parts and one **unit**
per (candidate, token budget): the defused, cut candidate text plus the newline that follows it
in the prompt, tokenized once (all of a round's candidates in one batched call). This module
holds those units: the batched tokenizer calls, the cutting (``prompting.truncation``, its steps
counted for many texts per call), and the counts and ids of cut texts derived from a text's own
tokens where the tokenizer is byte-level BPE (checked against the tokenizer at the start of a
run; a mismatch switches derivation off for the run).
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selectllm_local.records import PoolItem
from selectllm_local.selection import prompts as prompting
from selectllm_local.selection import wholetokens
from selectllm_local.selection.pieces import PIECE_CHECKS, PieceEncoder, encode_fast, pays_here
from selectllm_local.selection.storedunits import StoredUnits

log = logging.getLogger("selectllm_local.selection.promptids")

# How far a candidate's count with its trailing newline may differ from its count without it.
_SLACK = 8
# Derived counts and ids of cut candidates compared with the tokenizer's at the start of a run.
DERIVE_CHECKS = 16


def _boundary(text: str, b: int) -> bool:
    """``text[b]`` is a space between a non-space character and a letter: a word boundary."""
    return text[b] == " " and not text[b - 1].isspace() and text[b + 1].isalpha()


class CandidateTokens(StoredUnits):
    """The candidates of one run as token ids, each tokenized once and cut per budget.

    ``fast`` is the backend's Rust tokenizer (``tokenizers.Tokenizer``) or None; ``enabled``
    says whether token ids are wanted at all (``prepare`` does nothing otherwise). Units are
    kept across runs in a ``tokencache.UnitStore`` under ``store_root`` (None: none), opened
    for ``tokenizer`` (the HF tokenizer whose ``fast`` this is) at the first ``prepare``.
    ``pieces``: encode with ``pieces.PieceEncoder`` where it applies (None: where it pays,
    ``pieces.pays_here``)."""

    def __init__(
        self,
        items: Sequence[PoolItem],
        special_tokens: Sequence[str],
        fast: Any,
        enabled: bool,
        *,
        tokenizer: Any = None,
        store_root: Path | None = None,
        pieces: bool | None = None,
    ) -> None:
        super().__init__(tokenizer, store_root)
        self.items, self.special = items, list(special_tokens)
        self._fast: Any = fast
        self.enabled = enabled
        self._full: dict[int, str] = {}  # pool index -> defused candidate text
        self._raw_ids: dict[int, list[int]] = {}  # pool index -> ids of text + suffix
        self._raw_ends: dict[int, list[int]] = {}  # the same, each token's end byte (long texts)
        self._mark_ids: dict[str, list[int]] = {}  # suffix -> ids of TRUNCATION_MARK + suffix
        # derived counts still to compare with the tokenizer; -1 (never derive) unless the
        # tokenizer is byte-level BPE with no normalizer, the one kind the derivation holds for
        derive = _byte_level(self._fast)
        self._derive_checks = DERIVE_CHECKS if derive else -1
        self._id_checks = DERIVE_CHECKS  # derived ids of cut candidates, checked apart
        self._lengths: Any = None  # token id -> bytes it covers (numpy, filled as met)
        self._units: dict[tuple[int, int], tuple[str, bool, list[int]]] = {}
        pieces = pays_here() if pieces is None else pieces
        self._pieces = PieceEncoder.for_tokenizer(self._fast) if enabled and pieces else None
        self._piece_checks = PIECE_CHECKS
        nl = self._encode(["\n"])[0] if self.enabled else []
        self._newline: int | None = nl[0] if len(nl) == 1 else None

    # -- pieces -------------------------------------------------------------------------------
    def _encode(self, texts: list[str]) -> list[list[int]]:
        """Ids of ``texts`` (no special tokens): by ``pieces.PieceEncoder`` where it applies,
        its first ``PIECE_CHECKS`` texts of a run compared with the tokenizer's (any difference
        turns it off for the run), else by the tokenizer in one batched call."""
        if self._pieces is None or not texts:
            return self._encode_rust(texts)
        got, taken = self._pieces.encode(texts, self._encode_rust)
        if self._piece_checks > 0 and taken:
            check = taken[: self._piece_checks]
            self._piece_checks -= len(check)
            real = self._encode_rust([texts[j] for j in check])
            if any(got[j] != ids for j, ids in zip(check, real, strict=True)):
                log.info("the pre-token encoder differs from this tokenizer; not used this run")
                self._pieces = None
                if self.store is not None:  # its whole-token table may be what is wrong
                    wholetokens.discard(self.store.folder)
                return self._encode_rust(texts)
        return got

    def _encode_rust(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in encode_fast(self._fast, texts)]

    def _encode_ends(
        self,
        texts: list[str],
        need: Callable[[list[int]], bool] | None,
        wanted: list[bool] | None = None,
    ) -> list[tuple[list[int], list[int] | None]]:
        """(ids, each token's end as a UTF-8 byte offset) per text, the ends only while counts
        are derived and where ``wanted`` and ``need`` hold. A byte-level token covers exactly
        its own bytes, so the ends are the running sum of the tokens' byte lengths and the
        encoding skips the tokenizer's offsets (a fifth of its work on long texts)."""
        found = self._encode(texts)
        out: list[tuple[list[int], list[int] | None]] = []
        for j, ids in enumerate(found):
            ends = None
            if self._derive_checks >= 0 and (wanted is None or wanted[j]):
                if need is None or need(ids):
                    ends = self._byte_ends(ids)
            out.append((ids, ends))
        return out

    def _byte_ends(self, ids: list[int]) -> list[int]:
        """The running sum of the tokens' byte lengths: one byte per character of a token's
        string (the byte alphabet), the UTF-8 length of an added token's content."""
        arr = np.asarray(ids, dtype=np.int64)
        if self._lengths is None:  # from the whole-token table where there is one
            self._lengths = np.full(self._fast.get_vocab_size(with_added_tokens=True), -1)
            known = self._token_lengths if self._token_lengths is not None else np.zeros(0)
            n = min(len(known), len(self._lengths))
            self._lengths[:n] = known[:n]
            for tid, added in self._fast.get_added_tokens_decoder().items():
                if tid < len(self._lengths):
                    self._lengths[tid] = len(added.content.encode("utf-8"))
        table = self._lengths
        if len(arr) and int(arr.max()) >= len(table):  # ids beyond the stated vocabulary
            table = self._lengths = np.concatenate(
                [table, np.full(int(arr.max()) + 1 - len(table), -1)]
            )
        lens = table[arr]
        missing = lens < 0
        if missing.any():  # tokens met for the first time in this run
            for tid in set(arr[missing].tolist()):
                table[tid] = len(self._fast.id_to_token(tid) or "")
            lens = table[arr]
        return np.cumsum(lens).tolist()  # type: ignore[no-any-return]

    def _text(self, idx: int) -> str:
        text = self._full.get(idx)
        if text is None:
            item = self.items[idx]
            text = self._full[idx] = prompting.defuse(prompting.candidate_text(item), self.special)
        return text

    def prepare(self, indices: Sequence[int], budget: int, suffix: str = "\n") -> None:
        """Tokenize and cut the candidates of many prompts at once: each tokenizer call covers
        the whole round (batched and multi-threaded in Rust), none is made per prompt. The
        units made so far go to the store (``flush_store``): once per round."""
        self._prepare(indices, budget, suffix)
        self.flush_store()

    def _prepare(self, indices: Sequence[int], budget: int, suffix: str) -> None:
        if not self.enabled:
            return
        stored = suffix == "\n" and self._from_store(indices, budget)
        todo = sorted(
            {i for i in indices if i not in self._raw_ids and (i, budget) not in self._units}
        )
        todo = [i for i in todo if len(self._text(i)) <= budget * 12]
        # one batched call without the tokenizer's offsets; a text that will be cut keeps where
        # its tokens end (summed from their byte lengths, ``_encode_ends``)
        ended = self._encode_ends(
            [self._text(i) + suffix for i in todo], lambda ids: len(ids) + _SLACK > budget
        )
        for i, (ids, ends) in zip(todo, ended, strict=True):
            self._raw_ids[i] = ids
            if ends is not None:
                self._raw_ends[i] = ends
        pending = []
        fresh = []  # pool indices whose unit this call makes
        for idx in dict.fromkeys(indices):
            if (idx, budget) in self._units:
                continue
            fresh.append(idx)
            full, raw = self._text(idx), self._raw_ids.get(idx)
            if raw is not None and len(raw) + _SLACK <= budget:
                self._units[(idx, budget)] = (full, False, raw)
            else:
                pending.append(idx)
        cuts = self._truncate([self._text(i) for i in pending], pending, budget, suffix)
        derived = {j: ids for j, (_t, cut, ids) in enumerate(cuts) if cut and ids is not None}
        check = list(derived)[: self._id_checks]
        todo_j = [
            j
            for j, (_t, cut, ids) in enumerate(cuts)
            if (ids is None and cut) or (not cut and pending[j] not in self._raw_ids)
        ]
        encoded = dict(
            zip(todo_j, self._encode([cuts[j][0] + suffix for j in todo_j]), strict=True)
        )
        # the derived ids checked are compared with the tokenizer itself
        encoded.update(
            zip(check, self._encode_rust([cuts[j][0] + suffix for j in check]), strict=True)
        )
        if check:
            self._id_checks -= len(check)
            if not self._check_ids(derived, {j: encoded[j] for j in check}):
                rest = [j for j in derived if j not in encoded]
                encoded.update(
                    zip(rest, self._encode([cuts[j][0] + suffix for j in rest]), strict=True)
                )
        for j, (idx, (text, cut, made)) in enumerate(zip(pending, cuts, strict=True)):
            unit = encoded.get(j, made)
            if not cut and self._raw_ids.get(idx) is not None:
                unit = self._raw_ids[idx]
            assert unit is not None
            self._units[(idx, budget)] = (text, cut, unit)
        if stored and fresh and self.store is not None:
            self._to_store(fresh, budget)

    def _unit_batch(
        self, indices: Sequence[int], budget: int, suffix: str
    ) -> list[tuple[str, bool, list[int]]]:
        """(cut text, truncated, ids of cut text + suffix) per candidate, as ``render_messages``
        would cut it (``truncate_to_tokens`` with the same counts)."""
        units = self._units
        if not all((idx, budget) in units for idx in indices):  # else the round's prepare made them
            self._prepare(indices, budget, suffix)  # the store is written at the next round
        return [units[(idx, budget)] for idx in indices]

    def _truncate(
        self, texts: list[str], indices: list[int], budget: int, suffix: str = "\n"
    ) -> list[tuple[str, bool, list[int] | None]]:
        """``prompting.truncate_to_tokens`` of every text, its steps counted in one batched call
        per step: (cut text, truncated, ids of cut text + suffix when known without a call).

        A full text whose ids (with the newline) end in the lone newline token has a known count:
        BPE merges never undo, so a newline that stayed alone was never merged and the tokens
        before it are exactly those of the text alone. A shorter prefix is counted from the
        text's own tokens up to a word boundary (``_split``) plus its last word, and the cut
        text's ids are the text's tokens up to the cut plus the mark's (``_derived_ids``)."""
        if not texts:
            return []
        mark = len(self._fast.encode(prompting.TRUNCATION_MARK, add_special_tokens=False))
        steps = [prompting.truncation(t, budget, mark) for t in texts]
        asks = {j: next(g) for j, g in enumerate(steps)}
        base: dict[int, tuple[str, list[int], list[int]]] = {}  # text first counted, ids, ends
        done: dict[int, tuple[str, bool]] = {}
        while asks:
            counts: dict[int, int] = {}
            tails: dict[int, tuple[int, str]] = {}
            for j, ask in asks.items():
                raw = self._raw_ids.get(indices[j])
                if (
                    ask is texts[j]
                    and raw
                    and self._newline is not None
                    and raw[-1] == self._newline
                ):
                    counts[j] = len(raw) - 1
                    ends = self._raw_ends.get(indices[j])
                    if ends is not None:
                        base[j] = (ask, raw, ends)
                    continue
                split = self._split(base.get(j), ask)
                if split is not None:
                    tails[j] = split
            rest = [j for j in asks if j not in counts and j not in tails]
            ended = self._encode_ends([asks[j] for j in rest], None, [j not in base for j in rest])
            for j, (ids, ends) in zip(rest, ended, strict=True):
                counts[j] = len(ids)
                if ends is not None:
                    base[j] = (asks[j], ids, ends)
            found = self._encode([tail for _head, tail in tails.values()])
            for (j, (head, _tail)), enc in zip(tails.items(), found, strict=True):
                counts[j] = head + len(enc)
            self._check_counts({j: asks[j] for j in tails}, counts)
            nxt = {}
            for j in asks:
                try:
                    nxt[j] = steps[j].send(counts[j])
                except StopIteration as stop:
                    done[j] = stop.value
            asks = nxt
        out: list[tuple[str, bool, list[int] | None]] = []
        for j in range(len(texts)):
            text, cut = done[j]
            out.append((text, cut, self._derived_ids(base.get(j), text, suffix) if cut else None))
        return out

    # -- counts and ids from a text's own tokens ----------------------------------------------
    # Byte-level BPE (GPT-2, Llama 3, Qwen) tokenizes word by word: its pre-tokenizer's regex
    # always ends a word before a space that follows a non-space character and precedes a letter,
    # and merges never cross a word. So a prefix cut at such a space has the text's own tokens up
    # to it. The first ``DERIVE_CHECKS`` derived counts and ids of a run are compared with the
    # tokenizer's; a mismatch (another kind of tokenizer) switches derivation off for the run.

    def _split(
        self, base: tuple[str, list[int], list[int]] | None, ask: str
    ) -> tuple[int, str] | None:
        """(tokens before the last word boundary of ``ask``, the rest of ``ask``) when ``ask``
        is a prefix of the counted text ``base`` with such a boundary near its end; else None."""
        if base is None or self._derive_checks < 0:
            return None
        text, _ids, ends = base
        n = len(ask)
        if n >= len(text) or not text.startswith(ask):
            return None
        b = ask.rfind(" ", 0, n - 1)  # the last boundary, in the last 64 characters
        while b > max(0, n - 64) and not _boundary(ask, b):
            b = ask.rfind(" ", 0, b)
        if b <= 0 or not _boundary(ask, b):
            return None
        return bisect.bisect_right(ends, _byte_offset(ask, b)), ask[b:]

    def _derived_ids(
        self, base: tuple[str, list[int], list[int]] | None, cut_text: str, suffix: str
    ) -> list[int] | None:
        """Ids of ``cut_text + suffix`` (a prefix of ``base``'s text ending at a word boundary,
        plus the mark) from the text's own tokens, or None."""
        mark = prompting.TRUNCATION_MARK
        if base is None or self._derive_checks < 0 or not cut_text.endswith(mark):
            return None
        text, ids, ends = base
        n = len(cut_text) - len(mark)
        if n <= 0 or n + 1 >= len(text) or text[n] != " " or not _boundary(text, n):
            return None
        if not text.startswith(cut_text[:n]):
            return None
        tail = self._mark_ids.get(suffix)
        if tail is None:
            tail = self._mark_ids[suffix] = self._encode([mark + suffix])[0]
        return ids[: bisect.bisect_right(ends, _byte_offset(text, n))] + tail

    def _check_counts(self, asks: dict[int, str], counts: dict[int, int]) -> None:
        """While checks remain, count up to that many of the derived ``asks`` with the tokenizer
        too (a round's first batch holds every long candidate: checking all of them cost a fifth
        of the tokenizer's work); on a mismatch recount them all and stop deriving."""
        if self._derive_checks <= 0 or not asks:
            return
        check = list(asks)[: self._derive_checks]
        self._derive_checks -= len(check)
        real = self._encode_rust([asks[j] for j in check])
        if all(counts[j] == len(enc) for j, enc in zip(check, real, strict=True)):
            return
        self._derive_off()
        rest = [j for j in asks if j not in check]
        real += self._encode_rust([asks[j] for j in rest])
        for j, enc in zip(check + rest, real, strict=True):
            counts[j] = len(enc)

    def _check_ids(self, derived: dict[int, list[int]], real: dict[int, list[int]]) -> bool:
        """Whether the derived ids equal the tokenizer's (``real``); stops deriving if not."""
        if any(derived[j] != real[j] for j in real):
            self._derive_off()
            return False
        return True

    def _derive_off(self) -> None:
        if self._derive_checks >= 0:
            log.info("token counts of cut candidates cannot be derived for this tokenizer")
        self._derive_checks = -1


def _byte_level(fast: Any) -> bool:
    """Whether a fast tokenizer pre-tokenizes byte-level, word by word, adds no space before a
    text (token lengths then sum to its offsets) and normalizes nothing (GPT-2, Llama 3, Qwen,
    SmolLM2): the tokenizers whose word-boundary cuts keep their tokens.

    Reads the normalizer and the pre-tokenizer alone: serializing the whole tokenizer (its
    vocabulary and merges) to JSON cost 50-100 ms per run, about 1 ms per prompt."""
    backend = getattr(fast, "backend_tokenizer", fast)  # an HF tokenizer or a tokenizers.Tokenizer
    if not hasattr(backend, "pre_tokenizer"):
        return False
    try:
        if backend.normalizer is not None:
            return False
        pre_tok = backend.pre_tokenizer
        state = pre_tok.__getstate__() if pre_tok is not None else "{}"
        pre = json.loads(state)
    except Exception:  # an unusual tokenizer: do not derive  # noqa: BLE001
        return False
    kinds = {pre.get("type")} | {p.get("type") for p in pre.get("pretokenizers") or []}
    return "ByteLevel" in kinds and '"add_prefix_space":true' not in str(state).replace(" ", "")


def _byte_offset(text: str, n: int) -> int:
    """The UTF-8 byte offset of character ``n`` of ``text``."""
    return n if text.isascii() else len(text[:n].encode("utf-8"))
