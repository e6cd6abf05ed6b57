r"""Byte-level BPE token ids without the Rust tokenizer's per-text cost.

A byte-level BPE tokenizer (GPT-2, SmolLM2, Llama 3, Qwen) splits a text into pre-tokens with
one regular expression and runs BPE on each pre-token alone, so a text's ids are the ids of its
pre-tokens, joined. ``PieceEncoder`` does the split here with the tokenizer's own pattern, runs
the tokenizer's own BPE model (``model.tokenize``) once per distinct pre-token, and joins ids
from that table. On a pool's candidates that costs 55-65% of the CPU of the Rust tokenizer's
``encode_batch_fast``, which builds a full encoding object per text, but on one thread; it is
used where the batch would have no more than ``MAX_CORES`` cores (``pays_here``).

The split runs on Python's ``re`` in ASCII mode. The patterns ask of a non-ASCII character only
its class (letter ``\p{L}``, number ``\p{N}``, whitespace ``\s``, or none of these), so the
pattern is compiled with the non-ASCII letters, numbers and spaces met so far written into those
classes (``_class_source``; once more per call that meets a new one), and splits the text itself.
The class comes from the tokenizer library's own regex engine (and its Digits step), asked once
per character, so its Unicode data decides, not Python's. A text is left to the tokenizer itself
when it holds an ASCII control but tab, newline and carriage return, a lone surrogate, a
character whose classes disagree, a character with a one-letter ASCII case partner (the long s,
the Kelvin sign) where the pattern ignores case, an added token's content, or, under an NFC
normalizer, anything NFC would change; so is every text of a tokenizer this module does not know
exactly (``for_tokenizer`` returns None). The caller compares the first ``PIECE_CHECKS`` texts of
a run with the tokenizer and drops the encoder on any difference (``candidateids.CandidateTokens``).

A pre-token that is a vocabulary token the model gives back whole (``wholetokens``: asked once
per tokenizer) takes its id from ``token_to_id``, at about a third of a ``tokenize`` call.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Callable, Sequence
from functools import cache
from itertools import chain
from typing import Any
from unicodedata import category, is_normalized, normalize

# What ``for_tokenizer`` accepts, as the tokenizer's own JSON of its pre-tokenizer: GPT-2's
# ByteLevel split (SmolLM2), the same after isolating every digit (the tiny and pool tokenizers),
# and the Split patterns of Llama 3 and Qwen 2 before a ByteLevel without its own regex.
_GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Digits first: no pre-token spans a digit, and a run of spaces before one ends its piece, so
# ``\s+(?!\S)`` may stop before a digit as it does at the end of a text.
_GPT2_DIGITS = (
    r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""
)
# The Split patterns of Llama 3 and Qwen 2, spelled as in their tokenizer.json; no other is taken
# (a stand-in is exact only where the pattern's classes are the ones checked here).
_SPLITS = frozenset(
    {
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+",
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    }
)
# ASCII characters left to the tokenizer: controls but tab, newline and carriage return.
_UNSURE_ASCII = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Escapes whose Unicode meaning differs from their ASCII one in a way classes spelled out cannot
# keep.
_UNICODE_ESCAPES = frozenset("pPwWdDbB")
# The most cores at which the encoder is used. It does 55-65% of the CPU work of the Rust
# tokenizer's batched call, on one thread; the batch spreads over the cores (1.5x faster on two
# here), so on two cores the two finish together and on more the batch finishes first
# (``benchmarks/README.md``, "Pre-tokens").
MAX_CORES = 2
# Texts per run whose ids are compared with the tokenizer's before the encoder is trusted.
PIECE_CHECKS = 16
# Distinct pre-tokens kept per encoder, about 300 bytes each (60 MB); the table is emptied at
# the start of a call that finds it fuller (all of Dolly 15k makes 95,000).
_CACHE_MAX = 200_000


def _byte_chars() -> str:
    """The byte-level alphabet: character ``b`` of the result is how byte ``b`` is written
    before BPE (printable Latin-1 bytes stand for themselves; the others, space included, move
    above 255 in order)."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, shifted = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + shifted))
            shifted += 1
    return "".join(out)


# Character ``b`` is how byte ``b`` is written (a ``codecs.charmap_decode`` table).
_BYTE_CHARS = _byte_chars()


def _state(obj: Any) -> dict[str, Any] | None:
    try:
        state = json.loads(obj.__getstate__())
    except Exception:  # noqa: BLE001  (an unknown component: no fast path)
        return None
    return state if isinstance(state, dict) else None


def _split_source(pre: dict[str, Any]) -> str | None:
    """The pre-token pattern of a known pre-tokenizer (its JSON), or None for any other."""
    parts = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    if not isinstance(parts, list):
        return None
    kinds = [p.get("type") for p in parts]
    byte = parts[-1] if kinds and kinds[-1] == "ByteLevel" else None
    if byte is None or byte.get("add_prefix_space"):
        return None
    if kinds == ["ByteLevel"] and byte.get("use_regex"):
        return _GPT2
    if kinds == ["Digits", "ByteLevel"] and byte.get("use_regex"):
        return _GPT2_DIGITS if parts[0].get("individual_digits") else None
    if kinds == ["Split", "ByteLevel"] and not byte.get("use_regex"):
        split = parts[0]
        if split.get("behavior") == "Isolated" and not split.get("invert"):
            source = (split.get("pattern") or {}).get("Regex")
            return source if source in _SPLITS else None
    return None


def _class_source(
    source: str, letters: str = "", numbers: str = "", spaces: str = ""
) -> str | None:
    r"""``source`` for Python's ``re`` in ASCII mode with the non-ASCII characters met so far
    spelled out: ``\p{L}`` as ``A-Za-z`` plus ``letters``, ``\p{N}`` as ``0-9`` plus
    ``numbers``, ``\s`` and ``\S`` with ``spaces`` added (each in brackets outside a character
    class); None if it names a non-ASCII character, uses any other ``\p``/``\P`` class, ``\w``,
    ``\d``, ``\b`` or their negations, or ``\S`` inside a class once ``spaces`` is not empty."""
    if not source.isascii():
        return None
    sets = {r"\p{L}": "A-Za-z" + letters, r"\p{N}": "0-9" + numbers}
    out: list[str] = []
    i, in_class, opened = 0, False, -1  # opened: where the class's first member may stand
    while i < len(source):
        c = source[i]
        if c == "\\":
            escape, two = source[i : i + 5], source[i : i + 2]
            if escape in sets:
                out.append(sets[escape] if in_class else f"[{sets[escape]}]")
                i += 5
                continue
            if source[i + 1 : i + 2] in _UNICODE_ESCAPES:
                return None
            if spaces and two == r"\s":
                two = two + spaces if in_class else f"[{two}{spaces}]"
            elif spaces and two == r"\S":
                if in_class:
                    return None
                two = f"[^\\s{spaces}]"
            out.append(two)
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
            opened = i + 2 if source[i + 1 : i + 2] == "^" else i + 1
        elif c == "]" and in_class and i != opened:  # a "]" first in a class is a member
            in_class = False
        out.append(c)
        i += 1
    return "".join(out)


@cache
def _probes() -> tuple[Any, Any, Any, Any]:
    r"""The tokenizer library's own tests of a character: its regex engine's ``\p{L}``,
    ``\p{N}`` and ``\s`` (each removes a matching character), and the Digits pre-tokenizer."""
    from tokenizers import Regex, pre_tokenizers

    split = [
        pre_tokenizers.Split(Regex(p), behavior="removed") for p in (r"\p{L}", r"\p{N}", r"\s")
    ]
    return split[0], split[1], split[2], pre_tokenizers.Digits(individual_digits=True)


@cache
def _engine_class(c: str) -> tuple[bool, bool, bool, bool]:
    """(letter, number, whitespace) as the tokenizer's regex engine reads ``c``, and whether its
    Digits pre-tokenizer isolates ``c``: their Unicode data, not Python's, which may be newer."""
    letter, number, space, digits = _probes()
    return (
        not letter.pre_tokenize_str(c),
        not number.pre_tokenize_str(c),
        not space.pre_tokenize_str(c),
        len(digits.pre_tokenize_str(f"a{c}a")) == 3,
    )


def _char_class(c: str, folds: bool, digits: bool) -> str | None:
    """The class of a non-ASCII character as the split reads it: "L" (letter), "N" (number),
    "S" (whitespace), "O" (anything else), or None when it is left to the tokenizer. ``folds``:
    the pattern matches some part regardless of case; ``digits``: a Digits step isolates
    numbers first (Rust's own test, which must agree with the regex engine's)."""
    if category(c) == "Cs":
        return None  # a lone surrogate has no UTF-8
    if folds and any(len(x) == 1 and x.isascii() for x in (c.lower(), c.upper(), c.casefold())):
        return None  # an ASCII case partner (the long s, the Kelvin sign) could match a literal
    letter, number, space, digit = _engine_class(c)
    if letter + number + space > 1 or (digits and digit != number):
        return None
    return "L" if letter else "N" if number else "S" if space else "O"


def encode_fast(fast: Any, texts: Sequence[str]) -> list[Any]:
    """Encodings by Rust tokenizer ``fast`` without character offsets (``encode_batch_fast``,
    tokenizers >= 0.21: a third cheaper on short texts), for calls that need ids or counts only."""
    encode = getattr(fast, "encode_batch_fast", fast.encode_batch)
    return list(encode(list(texts), add_special_tokens=False)) if texts else []


def pays_here() -> bool:
    """Whether the encoder beats the Rust tokenizer's batches in wall time on this machine: they
    run on one thread (``TOKENIZERS_PARALLELISM`` off) or on at most ``MAX_CORES`` cores
    (``RAYON_NUM_THREADS``, else the cores this process may run on)."""
    if os.environ.get("TOKENIZERS_PARALLELISM", "").strip().lower() in ("0", "false", "off", "no"):
        return True
    try:
        cores = int(os.environ.get("RAYON_NUM_THREADS") or 0)
    except ValueError:
        cores = 0
    if cores <= 0:
        affinity = getattr(os, "sched_getaffinity", None)
        cores = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    return cores <= MAX_CORES


class PieceEncoder:
    """Ids of texts by the tokenizer's own split and BPE, each distinct pre-token tokenized once
    (``encode``). Made by ``for_tokenizer``; ``fallback`` encodes the texts it does not take."""

    def __init__(self, model: Any, source: str, added: list[str], nfc: bool = False) -> None:
        ascii_source = _class_source(source)
        if ascii_source is None:
            raise ValueError(f"a split pattern this encoder cannot read: {source!r}")
        self._model, self._source = model, source
        self._pattern = re.compile(ascii_source, re.ASCII)
        self._folds = "(?i" in source  # a part that matches regardless of case
        self._digits = source == _GPT2_DIGITS  # a Digits step before the regex
        # non-ASCII characters met: their class ("L", "N", "S", "O"; None: left to the
        # tokenizer), those of each class the pattern spells out, and the unsure ones
        self._class: dict[str, str | None] = {}
        self._members = {"L": "", "N": "", "S": ""}
        self._unsure: set[str] = set()
        self._added = (
            re.compile("|".join(map(re.escape, sorted(set(added), key=len, reverse=True))))
            if added
            else None
        )
        self._nfc = nfc
        self._ids = _PieceIds(model)
        # the built-in patterns match every character; a tokenizer's own may leave a gap
        self._gaps = source not in (_GPT2, _GPT2_DIGITS)

    @classmethod
    def for_tokenizer(cls, fast: Any) -> PieceEncoder | None:
        """An encoder for Rust tokenizer ``fast`` when it is byte-level BPE of a known split with
        no normalizer (or NFC, which leaves ASCII alone), no dropout, no word prefix or suffix,
        and no truncation or padding set; otherwise None."""
        backend = getattr(fast, "backend_tokenizer", fast)
        model = getattr(backend, "model", None)
        if model is None or type(model).__name__ != "BPE":
            return None
        try:
            if model.dropout or model.continuing_subword_prefix or model.end_of_word_suffix:
                return None
            if getattr(model, "byte_fallback", False):
                return None
            if backend.truncation is not None or backend.padding is not None:
                return None
            norm = backend.normalizer
            if norm is not None and (_state(norm) or {}).get("type") != "NFC":
                return None
            pre = _state(backend.pre_tokenizer) if backend.pre_tokenizer is not None else None
            added = [t.content for t in backend.get_added_tokens_decoder().values() if t.content]
            if norm is not None:  # a normalized added token matches its NFC form
                added += [normalize("NFC", a) for a in added]
            source = _split_source(pre) if pre else None
            nfc = norm is not None
            return cls(model, source, added, nfc) if source else None
        except Exception:  # noqa: BLE001  (an older tokenizers build, a pattern it cannot read)
            return None

    def _pieces(self, text: str) -> list[str] | None:
        """``text``'s pre-tokens, or None when the tokenizer must encode it (its non-ASCII
        characters must have been met, ``_learn``)."""
        if self._added is not None and self._added.search(text):
            return None
        if _UNSURE_ASCII.search(text):
            return None
        if not text.isascii():
            if self._unsure and not self._unsure.isdisjoint(text):
                return None
            if self._nfc and not is_normalized("NFC", text):
                return None
        pieces: list[str] = self._pattern.findall(text)
        if self._gaps and sum(map(len, pieces)) != len(text):  # a gap the pattern left
            return None
        return pieces

    def _learn(self, texts: Sequence[str]) -> None:
        """Class the non-ASCII characters of ``texts`` not met before and, if any is a letter,
        number or space, spell it into the pattern (one compile per call)."""
        chars: set[str] = set()
        for text in texts:
            if not text.isascii():
                chars.update(text)
        new = [c for c in chars if c > "\x7f" and c not in self._class]
        grew = False
        for c in sorted(new):
            cls = self._class[c] = _char_class(c, self._folds, self._digits)
            if cls is None:
                self._unsure.add(c)
            elif cls != "O":
                self._members[cls] += c
                grew = True
        if grew:
            m = self._members
            source = _class_source(self._source, m["L"], m["N"], m["S"])
            if source is None:  # \S inside a class (no known split has one): leave these texts
                self._unsure.update(m["S"])
                m["S"] = ""
                source = _class_source(self._source, m["L"], m["N"])
            assert source is not None
            self._pattern = re.compile(source, re.ASCII)

    def use_whole(self, table: bytes | None) -> None:
        """Take the ids of whole tokens from ``table`` (``wholetokens``; None: ask ``tokenize``
        for every pre-token)."""
        self._ids.whole = table or b""

    def takes(self, text: str) -> bool:
        """Whether ``encode`` tokenizes ``text`` itself (else it asks the fallback)."""
        self._learn([text])
        return self._pieces(text) is not None

    def encode(
        self, texts: Sequence[str], fallback: Callable[[list[str]], list[list[int]]]
    ) -> tuple[list[list[int]], list[int]]:
        """The ids of every text, as the tokenizer gives them without special tokens, and the
        positions of the texts this encoder tokenized (``fallback`` did the others)."""
        out: list[list[int] | None] = [None] * len(texts)
        slow: list[int] = []
        taken: list[int] = []
        if len(self._ids) > _CACHE_MAX:
            self._ids.clear()
        self._learn(texts)
        split = [self._pieces(text) for text in texts]
        self._ids.add(set(chain.from_iterable(p for p in split if p is not None)))
        get = self._ids.__getitem__
        for j, pieces in enumerate(split):
            if pieces is None:
                slow.append(j)
            else:
                out[j] = list(chain.from_iterable(map(get, pieces)))
                taken.append(j)
        if slow:
            for j, got in zip(slow, fallback([texts[j] for j in slow]), strict=True):
                out[j] = got
        return out, taken  # type: ignore[return-value]


class _PieceIds(dict[str, list[int]]):
    """Pre-token -> its ids, made for many new pre-tokens at once (``add``): from the model's
    ``token_to_id`` where ``whole`` (``wholetokens``) says the model gives that token back whole,
    else by its ``tokenize``."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self._tokenize, self._token_to_id = model.tokenize, model.token_to_id
        self.whole = b""  # the whole-token table; empty: none

    def add(self, pieces: set[str]) -> None:
        """Make the ids of the ``pieces`` not here yet: their byte-alphabet forms come from one
        decode of them all, joined by a NUL (a byte no pre-token holds: texts with one go to the
        tokenizer), whose form is a character of its own."""
        new = [p for p in pieces if p not in self]  # not ``pieces - keys()``: walks every key
        if not new:
            return
        joined = "\x00".join(new).encode("utf-8")
        raws = codecs.charmap_decode(joined, "strict", _BYTE_CHARS)[0].split(_BYTE_CHARS[0])
        whole, n = self.whole, len(self.whole)
        if whole:
            tids = map(self._token_to_id, raws)
            self.update(
                {
                    p: [t]
                    for p, t in zip(new, tids, strict=True)
                    if t is not None and t < n and whole[t]
                }
            )
        tokenize = self._tokenize
        self.update(
            {
                p: [t.id for t in tokenize(r)]
                for p, r in zip(new, raws, strict=True)
                if p not in self
            }
        )
