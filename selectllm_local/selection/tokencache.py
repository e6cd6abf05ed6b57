"""Candidate units kept across runs: a second ``select`` on the same pool tokenizes nothing again.

An experiment runs several selections on one pool (other budgets, modes, seeds), and every one of
them cut and tokenized the same candidates (``candidateids.CandidateTokens``): on a CPU that was
most of our time per prompt. A unit (a candidate's defused text cut to a token budget, plus the
newline after it, as token ids) depends only on the tokenizer, the budget and the text, so it is
stored under the user cache (``$SELECTLLM_TOKEN_CACHE``, default
``~/.cache/selectllm-local/tokens``; ``off`` turns the store off):

* one folder per **fingerprint**: the tokenizer's content (the SHA-256 of its ``tokenizer.json``
  where it was loaded from a folder, else its serialization), its added tokens and pre-tokenizer,
  the special tokens defused in candidate texts, the truncation mark, the unit suffix, the
  source of the modules that render and cut candidates, and ``UNIT_VERSION``;
* per token budget, ``b<budget>.json`` (the row text hashes) and the ``.npy`` it names (each
  row's offset, length and cut length, then every unit's ids). The array is written first under a fresh name, the index
  last and atomically, so a reader sees a complete pair or the previous one; a damaged or missing
  pair is a miss (logged), never an error.

Stored units are used as they are; the prompt builder still checks the first prompt of every
shape, and every ``VERIFY_EVERY``-th, against a whole-prompt tokenization, as for fresh units.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selectllm_local.run.store import atomic_path, read_json, save_npy
from selectllm_local.selection import prompts as prompting

log = logging.getLogger("selectllm_local.selection.promptids")

ENV = "SELECTLLM_TOKEN_CACHE"
UNIT_VERSION = 1  # raise when the unit's layout changes: old stores go unread
OFF = {"0", "off", "false", "no", "none"}
# The modules whose code decides a unit (candidate text, defusing, cutting, counting): their
# source is part of the fingerprint, so a changed cut never meets units stored before it.
_CUTTING_CODE = ("prompts.py", "candidateids.py", "tokencache.py")


def default_root() -> Path | None:
    """``$SELECTLLM_TOKEN_CACHE``, or ``~/.cache/selectllm-local/tokens``; None when off."""
    env = os.environ.get(ENV)
    if env is not None and env.strip().lower() in OFF:
        return None
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "selectllm-local" / "tokens"


def text_key(text: str) -> str:
    """The store's key of a defused candidate text."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()


def fingerprint(tokenizer: Any, fast: Any, special: Sequence[str], suffix: str) -> str | None:
    """What the units of a run depend on besides text and budget (module docstring), or None
    where the tokenizer's content cannot be read."""
    h = hashlib.sha256()
    source = Path(str(getattr(tokenizer, "name_or_path", "") or "")) / "tokenizer.json"
    try:
        if source.is_file():
            h.update(b"file:" + hashlib.sha256(source.read_bytes()).digest())
        else:  # built in memory: its whole serialization (tens of ms on a large vocabulary)
            h.update(b"str:" + fast.to_str().encode("utf-8"))
        added = sorted((tid, tok.content) for tid, tok in fast.get_added_tokens_decoder().items())
        pre = fast.pre_tokenizer.__getstate__() if fast.pre_tokenizer is not None else None
        norm = fast.normalizer.__getstate__() if fast.normalizer is not None else None
    except Exception as exc:  # an unusual tokenizer: no store  # noqa: BLE001
        log.info("candidate token store off: cannot fingerprint the tokenizer (%s)", exc)
        return None
    for name in _CUTTING_CODE:  # any edit to the cutting code makes a new store
        h.update(hashlib.sha256((Path(__file__).parent / name).read_bytes()).digest())
    facts = [
        UNIT_VERSION,
        prompting.TRUNCATION_MARK,
        suffix,
        list(special),
        fast.get_vocab_size(with_added_tokens=True),
        added,
        str(pre),
        str(norm),
    ]
    h.update(json.dumps(facts, ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()[:32]


class UnitStore:
    """The stored units of one fingerprint: ``get`` per (budget, text key), ``put`` new ones.

    Per budget, ``b<budget>.json`` names the array and lists the row keys; the array (int32)
    holds, per row in that order, (offset, length, cut length), then every unit's ids."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._rows: dict[int, dict[str, int]] = {}  # budget -> key -> row number
        self._arr: dict[int, Any] = {}  # budget -> the array the index names
        self._head: dict[int, list[int]] = {}  # budget -> its rows' (offset, length, cut)
        self.hits = self.misses = 0

    def _load(self, budget: int) -> dict[str, int]:
        rows = self._rows.get(budget)
        if rows is not None:
            return rows
        index = self.folder / f"b{budget}.json"
        rows, arr = {}, np.zeros(0, dtype=np.int32)
        if index.is_file():
            try:
                meta = read_json(index)
                keys = meta["keys"]
                found = np.load(self.folder / meta["data"])  # read whole: slicing a memmap is slow
                if meta.get("version") != UNIT_VERSION or found.ndim != 1:
                    raise ValueError("another layout")
                if len(found) < 3 * len(keys):
                    raise ValueError("the array is shorter than its index")
                rows, arr = {k: j for j, k in enumerate(keys)}, found
            except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
                log.warning("ignoring a damaged candidate token store in %s: %s", self.folder, exc)
        self._rows[budget], self._arr[budget] = rows, arr
        self._head[budget] = arr[: 3 * len(rows)].tolist()
        return rows

    def get(self, budget: int, key: str) -> tuple[int, list[int]] | None:
        """(cut length: -1 when the text was not cut, else the characters kept before the mark;
        the unit's ids), or None."""
        j = self._load(budget).get(key)
        if j is None:
            self.misses += 1
            return None
        arr = self._arr[budget]
        off, n, cut = self._head[budget][3 * j : 3 * j + 3]
        if off + n > len(arr):
            self.misses += 1
            return None
        self.hits += 1
        return cut, arr[off : off + n].tolist()

    def read_units(
        self, budget: int, texts: dict[str, str]
    ) -> dict[str, tuple[str, bool, list[int]]]:
        """The stored units of ``texts`` (key -> defused candidate text): key -> (text as cut,
        whether it was cut, ids of that text and the newline)."""
        mark = prompting.TRUNCATION_MARK
        out = {}
        for key, full in texts.items():
            found = self.get(budget, key)
            if found is not None:
                cut, ids = found
                out[key] = (full, False, ids) if cut < 0 else (full[:cut] + mark, True, ids)
        return out

    def write_units(self, budget: int, units: dict[str, tuple[str, bool, list[int]]]) -> None:
        """Store ``units`` (key -> (text as cut, whether it was cut, ids)); see ``read_units``."""
        mark = len(prompting.TRUNCATION_MARK)
        self.put(
            budget, {k: (len(t) - mark if cut else -1, ids) for k, (t, cut, ids) in units.items()}
        )

    def put(self, budget: int, units: dict[str, tuple[int, list[int]]]) -> None:
        """Add ``units`` (key -> (cut length, ids)) to the stored ones and write the pair."""
        rows = self._load(budget)
        new = [(k, u) for k, u in units.items() if k not in rows]
        if not new:
            return
        old, old_head = self._arr[budget], self._head[budget]
        keys = list(rows) + [k for k, _u in new]
        head = np.zeros(3 * len(keys), dtype=np.int32)
        parts: list[Any] = [head]
        off = len(head)
        for j, k in enumerate(list(rows)):  # the stored rows, moved after the longer head
            o, n, cut = old_head[3 * rows[k] : 3 * rows[k] + 3]
            head[3 * j : 3 * j + 3] = (off, n, cut)
            parts.append(old[o : o + n])
            off += n
        for j, (_k, (cut, ids)) in enumerate(new, start=len(rows)):
            head[3 * j : 3 * j + 3] = (off, len(ids), cut)
            parts.append(np.asarray(ids, dtype=np.int32))
            off += len(ids)
        arr = np.concatenate(parts)
        name = f"b{budget}-{uuid.uuid4().hex[:12]}.npy"
        index = self.folder / f"b{budget}.json"
        try:
            previous = read_json(index).get("data") if index.is_file() else None
        except (OSError, ValueError, AttributeError):
            previous = None
        try:
            save_npy(self.folder / name, arr)
            with atomic_path(index) as tmp:
                tmp.write_text(
                    json.dumps({"version": UNIT_VERSION, "data": name, "keys": keys}), "utf-8"
                )
        except OSError as exc:
            log.warning("cannot write the candidate token store in %s: %s", self.folder, exc)
            return
        if previous and previous != name:
            (self.folder / previous).unlink(missing_ok=True)
        self._rows[budget] = {k: j for j, k in enumerate(keys)}
        self._arr[budget], self._head[budget] = arr, head.tolist()


def open_store(
    tokenizer: Any, fast: Any, special: Sequence[str], suffix: str, root: Path | None
) -> UnitStore | None:
    """The store of this tokenizer under ``root`` (None: no store)."""
    if root is None or fast is None:
        return None
    key = fingerprint(tokenizer, fast, special, suffix)
    return None if key is None else UnitStore(root / key)
