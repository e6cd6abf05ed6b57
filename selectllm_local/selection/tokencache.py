"""Candidate units kept across runs: a second ``select`` on the same pool tokenizes nothing again.

An experiment runs several selections on one pool (other budgets, modes, seeds), and every one of
them cut and tokenized the same candidates (``candidateids.CandidateTokens``): on a CPU that was
most of our time per prompt. A unit (a candidate's defused text cut to a token budget, plus the
newline after it, as token ids) depends only on the tokenizer, the budget and the text, so it is
stored under the user cache (``$SELECTLLM_TOKEN_CACHE``, default
``~/.cache/selectllm-local/tokens``; ``off`` turns the store off):

* one folder per **fingerprint**: the tokenizer's content (the SHA-256 of its ``tokenizer.json``
  where it was loaded from a folder, else its serialization), its added tokens and pre-tokenizer,
  the special tokens defused in candidate texts, the truncation mark, the unit suffix and
  ``UNIT_VERSION`` (raise it whenever the cutting changes);
* per token budget, ``b<budget>.json`` (row text hash -> offset, length, cut length) and the
  ``.npy`` of every unit's ids it names. The array is written first under a fresh name, the index
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

from selectllm_local.run.store import read_json, save_npy, write_json
from selectllm_local.selection import prompts as prompting

log = logging.getLogger("selectllm_local.selection.promptids")

ENV = "SELECTLLM_TOKEN_CACHE"
UNIT_VERSION = 1  # raise when the cutting or the unit's layout changes: old stores go unread
OFF = {"0", "off", "false", "no", "none"}


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
    """The stored units of one fingerprint: ``get`` per (budget, text key), ``put`` new ones."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._rows: dict[int, dict[str, list[int]]] = {}  # budget -> key -> [offset, len, cut]
        self._ids: dict[int, Any] = {}  # budget -> the ids array the index names
        self.hits = self.misses = 0

    def _load(self, budget: int) -> dict[str, list[int]]:
        rows = self._rows.get(budget)
        if rows is not None:
            return rows
        index = self.folder / f"b{budget}.json"
        rows, arr = {}, np.zeros(0, dtype=np.int32)
        if index.is_file():
            try:
                meta = read_json(index)
                arr = np.load(self.folder / meta["data"], mmap_mode="r")
                rows = meta["rows"]
                if meta.get("version") != UNIT_VERSION or arr.ndim != 1:
                    rows, arr = {}, np.zeros(0, dtype=np.int32)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring a damaged candidate token store in %s: %s", self.folder, exc)
                rows, arr = {}, np.zeros(0, dtype=np.int32)
        self._rows[budget], self._ids[budget] = rows, arr
        return rows

    def get(self, budget: int, key: str) -> tuple[int, list[int]] | None:
        """(cut length: -1 when the text was not cut, else the characters kept before the mark;
        the unit's ids), or None."""
        row = self._load(budget).get(key)
        if row is None:
            self.misses += 1
            return None
        off, n, cut = row
        self.hits += 1
        return cut, self._ids[budget][off : off + n].tolist()

    def put(self, budget: int, units: dict[str, tuple[int, list[int]]]) -> None:
        """Add ``units`` (key -> (cut length, ids)) to the stored ones and write the pair."""
        rows = dict(self._load(budget))
        new = {k: u for k, u in units.items() if k not in rows}
        if not new:
            return
        old = self._ids[budget]
        parts = [np.asarray(old, dtype=np.int32)]
        off = len(old)
        for key, (cut, ids) in new.items():
            rows[key] = [off, len(ids), cut]
            parts.append(np.asarray(ids, dtype=np.int32))
            off += len(ids)
        arr = np.concatenate(parts)
        name = f"b{budget}-{uuid.uuid4().hex[:12]}.npy"
        index = self.folder / f"b{budget}.json"
        try:
            previous = read_json(index).get("data") if index.is_file() else None
        except (OSError, ValueError):
            previous = None
        try:
            save_npy(self.folder / name, arr)
            write_json(index, {"version": UNIT_VERSION, "data": name, "rows": rows})
        except OSError as exc:
            log.warning("cannot write the candidate token store in %s: %s", self.folder, exc)
            return
        if previous and previous != name:
            (self.folder / previous).unlink(missing_ok=True)
        self._rows[budget], self._ids[budget] = rows, arr


def open_store(
    tokenizer: Any, fast: Any, special: Sequence[str], suffix: str, root: Path | None
) -> UnitStore | None:
    """The store of this tokenizer under ``root`` (None: no store)."""
    if root is None or fast is None:
        return None
    key = fingerprint(tokenizer, fast, special, suffix)
    return None if key is None else UnitStore(root / key)
