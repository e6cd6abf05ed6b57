"""Candidate units kept across runs: a second ``select`` on the same pool tokenizes nothing again.

An experiment runs several selections on one pool, each cutting and tokenizing the same candidates
(``candidateids.CandidateTokens``): on a CPU most of our time per prompt. A unit (a candidate's
defused text cut to a token budget, plus the newline after it, as token ids) depends only on the
tokenizer, the budget and the text, so it is stored under ``$SELECTLLM_TOKEN_CACHE`` (default
``~/.cache/selectllm-local/tokens``; ``off``: no store):

* one folder per **fingerprint**: the tokenizer's content (the SHA-256 of its ``tokenizer.json``
  where it was loaded from a folder, else its serialization), its added tokens and pre-tokenizer,
  the special tokens defused in candidate texts, the truncation mark, the unit suffix, the code of
  the modules that render and cut candidates, the ``tokenizers`` and ``transformers`` versions and
  ``UNIT_VERSION``; folders of other fingerprints not used for ``STALE_DAYS`` are removed;
* per token budget, ``b<budget>.json`` (the row text hashes, a BLAKE2b of the array) and the
  ``b<budget>-<12 hex>.npy`` it names (each row's offset, length and cut length, then the ids),
  the array written first, the index last and atomically: a reader sees one complete pair.

A cache: anything wrong with it (unreadable, damaged, a file name it would not write) is a miss,
logged once, never an error; it deletes no file whose name it would not write. New units are
written once per round (``flush``), merged with the pair another run wrote meanwhile. The first
``storedunits.STORE_CHECKS`` hits per budget of a run are compared with a fresh tokenization, and
the prompt builder checks the first prompt of every shape (and every ``VERIFY_EVERY``-th) against a
whole-prompt tokenization; a mismatch deletes what was read and stops the store for the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selectllm_local.run.store import atomic_path, read_json, save_npy
from selectllm_local.selection import prompts as prompting

log = logging.getLogger(__name__)

ENV = "SELECTLLM_TOKEN_CACHE"
UNIT_VERSION = 2  # raise when the unit's layout changes: old stores go unread
OFF = {"0", "off", "false", "no", "none"}
STALE_DAYS = 30  # fingerprint folders unused this long are removed when a store is opened
# The modules whose code decides a unit (candidate text, defusing, cutting, counting): their
# code is part of the fingerprint, so a changed cut never meets units stored before it.
_CUTTING_CODE = ("prompts.py", "candidateids.py", "pieces.py", "tokencache.py", "wholetokens.py")
_FOLDER = re.compile(r"[0-9a-f]{32}")
# every file name the store writes (the temporary ones of ``atomic_path`` included)
_OURS = re.compile(r"\.?(b\d+(\.json|-[0-9a-f]{12}\.npy)|whole-[0-9a-f]{12}\.npy)(\..+\.tmp)?")


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


def data_name(budget: int, name: Any) -> str | None:
    """``name`` if it is an array name the store writes for ``budget``, else None: an index is
    never trusted to name a file to read or delete (``../x``, the index itself)."""
    ok = isinstance(name, str) and re.fullmatch(rf"b{budget}-[0-9a-f]{{12}}\.npy", name)
    return name if ok else None


def _code_digest(name: str) -> bytes | None:
    """A digest of a cutting module's code: its source, else (an install without sources) its
    compiled file, which changes with the code too; None where neither can be read."""
    path = Path(__file__).parent / name
    module = sys.modules.get(f"{__package__}.{path.stem}")
    origin = getattr(getattr(module, "__spec__", None), "origin", None)
    for candidate in (path, path.with_suffix(".pyc"), origin, getattr(module, "__cached__", None)):
        try:
            if candidate:
                return hashlib.sha256(Path(candidate).read_bytes()).digest()
        except Exception:  # noqa: BLE001 - the next place, or no store
            continue
    return None


def _versions() -> list[str | None]:
    """The versions of the libraries that tokenize (an upgrade may change their ids)."""
    return [
        getattr(sys.modules.get(m), "__version__", None) for m in ("tokenizers", "transformers")
    ]


def fingerprint(tokenizer: Any, fast: Any, special: Sequence[str], suffix: str) -> str | None:
    """What the units of a run depend on besides text and budget (module docstring), or None
    where the tokenizer's content or the cutting code cannot be read (no store, logged)."""
    h = hashlib.sha256()
    try:
        source = Path(str(getattr(tokenizer, "name_or_path", "") or "")) / "tokenizer.json"
        if source.is_file():
            h.update(b"file:" + hashlib.sha256(source.read_bytes()).digest())
        else:  # built in memory: its whole serialization (tens of ms on a large vocabulary)
            h.update(b"str:" + fast.to_str().encode("utf-8"))
        added = sorted((tid, tok.content) for tid, tok in fast.get_added_tokens_decoder().items())
        pre = fast.pre_tokenizer.__getstate__() if fast.pre_tokenizer is not None else None
        norm = fast.normalizer.__getstate__() if fast.normalizer is not None else None
        vocab = fast.get_vocab_size(with_added_tokens=True)
    except Exception as exc:  # an unusual tokenizer: no store  # noqa: BLE001
        log.info("candidate token store off: cannot fingerprint the tokenizer (%s)", exc)
        return None
    for name in _CUTTING_CODE:  # any edit to the cutting code makes a new store
        digest = _code_digest(name)
        if digest is None:
            log.info("candidate token store off: cannot read the code of %s", name)
            return None
        h.update(digest)
    facts = [
        UNIT_VERSION,
        prompting.TRUNCATION_MARK,
        suffix,
        list(special),
        vocab,
        added,
        str(pre),
        str(norm),
        _versions(),
    ]
    h.update(json.dumps(facts, ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()[:32]


def array_digest(arr: Any) -> str:
    return hashlib.blake2b(np.ascontiguousarray(arr).tobytes(), digest_size=16).hexdigest()


class UnitStore:
    """The stored units of one fingerprint: ``get`` per (budget, text key), ``add`` new ones,
    ``flush`` to write them (``put``: both).

    Per budget, ``b<budget>.json`` names the array and lists the row keys; the array (int32)
    holds, per row in that order, (offset, length, cut length), then every unit's ids."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._rows: dict[int, dict[str, int]] = {}  # budget -> key -> row number
        self._arr: dict[int, Any] = {}  # budget -> the array the index names
        self._head: dict[int, list[int]] = {}  # budget -> its rows' (offset, length, cut)
        self._name: dict[int, str | None] = {}  # budget -> the array last read or written
        self._pending: dict[int, dict[str, tuple[int, list[int]]]] = {}  # budget -> new units
        self._read_failed = self._write_failed = False  # each logged once; no writes after one
        self.hits = self.misses = self.writes = 0
        self.hit_budgets: set[int] = set()

    # -- reading ------------------------------------------------------------------------------
    def _read(self, budget: int) -> tuple[list[str], Any, str] | None:
        """The pair on disk (row keys, array, array name), None where there is none; raises on
        anything unexpected."""
        try:
            meta = read_json(self.folder / f"b{budget}.json")
        except FileNotFoundError:
            return None
        if not isinstance(meta, dict) or meta.get("version") != UNIT_VERSION:
            raise ValueError("another layout")
        name, keys = data_name(budget, meta.get("data")), meta.get("keys")
        if name is None:
            raise ValueError(f"the index names {meta.get('data')!r}, not an array of the store")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError("the index has no list of keys")
        found = np.load(self.folder / name, allow_pickle=False)  # whole: a memmap slices slowly
        if not isinstance(found, np.ndarray) or found.ndim != 1 or found.dtype != np.int32:
            raise ValueError("the array is not a flat int32 array")
        if meta.get("blake2b") != array_digest(found):
            raise ValueError("the array's checksum differs from its index's")
        n = 3 * len(keys)
        if len(found) < n:
            raise ValueError("the array is shorter than its index")
        offs, lens = found[0:n:3].astype(np.int64), found[1:n:3].astype(np.int64)
        if len(keys) and ((offs < n) | (lens < 0) | (offs + lens > len(found))).any():
            raise ValueError("a row points outside the array")
        return keys, found, name

    def _load(self, budget: int) -> dict[str, int]:
        rows = self._rows.get(budget)
        if rows is not None:
            return rows
        rows, arr, name = {}, np.zeros(0, dtype=np.int32), None
        try:
            found = self._read(budget)
            if found is not None:
                keys, arr, name = found
                rows = {k: j for j, k in enumerate(keys)}
        except Exception as exc:  # a cache: whatever is wrong is a miss  # noqa: BLE001
            self._read_problem(budget, exc)
        self._rows[budget], self._arr[budget], self._name[budget] = rows, arr, name
        self._head[budget] = arr[: 3 * len(rows)].tolist()
        return rows

    def _read_problem(self, budget: int, exc: Exception) -> None:
        level = logging.DEBUG if self._read_failed else logging.WARNING
        self._read_failed = True
        log.log(level, "ignoring the candidate token store's b%d entry in %s (a miss): %s: %s",
                budget, self.folder, type(exc).__name__, exc)  # fmt: skip

    def get(self, budget: int, key: str) -> tuple[int, list[int]] | None:
        """(cut length: -1 when the text was not cut, else the characters kept before the mark;
        the unit's ids), or None."""
        j = self._load(budget).get(key)
        if j is None:
            self.misses += 1
            return None
        off, n, cut = self._head[budget][3 * j : 3 * j + 3]
        self.hits += 1
        self.hit_budgets.add(budget)
        return cut, self._arr[budget][off : off + n].tolist()

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

    # -- writing ------------------------------------------------------------------------------
    def write_units(self, budget: int, units: dict[str, tuple[str, bool, list[int]]]) -> None:
        """Keep ``units`` (key -> (text as cut, whether it was cut, ids); see ``read_units``)
        for the next ``flush``."""
        mark = len(prompting.TRUNCATION_MARK)
        self.add(
            budget, {k: (len(t) - mark if cut else -1, ids) for k, (t, cut, ids) in units.items()}
        )

    def add(self, budget: int, units: dict[str, tuple[int, list[int]]]) -> None:
        """Keep ``units`` (key -> (cut length, ids)) not stored yet for the next ``flush``."""
        if self._write_failed:
            return
        rows, pending = self._load(budget), self._pending.setdefault(budget, {})
        for key, unit in units.items():
            if key not in rows:
                pending.setdefault(key, unit)

    def put(self, budget: int, units: dict[str, tuple[int, list[int]]]) -> None:  # add, flush
        self.add(budget, units)
        self.flush()

    def flush(self) -> None:
        """Write the units added since the last flush: one array and index per budget."""
        pending, self._pending = self._pending, {}
        for budget, units in pending.items():
            if units and not self._write_failed:
                self._write(budget, units)

    def _disk_name(self, budget: int) -> str | None:
        """The array the index on disk names now (None: none, or not one the store writes)."""
        try:
            return data_name(budget, read_json(self.folder / f"b{budget}.json").get("data"))
        except Exception:  # noqa: BLE001 - missing or damaged: nothing to merge
            return None

    def _write(self, budget: int, new: dict[str, tuple[int, list[int]]]) -> None:
        """Write the stored units, those another run wrote since they were read, and ``new``:
        the array first, then the index, unless the index changed meanwhile (then again)."""
        for _attempt in range(3):
            disk, other = self._disk_name(budget), None
            if disk is not None and disk != self._name.get(budget):  # another run wrote
                try:
                    other = self._read(budget)
                except Exception:  # noqa: BLE001 - its units are lost, ours are written
                    other = None
            expect = other[2] if other is not None else disk
            keys, arr = self._assemble(budget, other, new)
            name = f"b{budget}-{uuid.uuid4().hex[:12]}.npy"
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                save_npy(self.folder / name, arr)
                if self._disk_name(budget) != expect:  # another run wrote meanwhile: merge it
                    (self.folder / name).unlink(missing_ok=True)
                    continue
                meta = {"version": UNIT_VERSION, "data": name, "blake2b": array_digest(arr)}
                with atomic_path(self.folder / f"b{budget}.json") as tmp:
                    tmp.write_text(json.dumps({**meta, "keys": keys}), "utf-8")
            except Exception as exc:  # a cache: never an error  # noqa: BLE001
                self._unlink(name)
                self._write_problem(exc)
                return
            for old in {expect, self._name.get(budget)} - {None, name}:
                self._unlink(old)
            self._rows[budget] = {k: j for j, k in enumerate(keys)}
            self._arr[budget], self._name[budget] = arr, name
            self._head[budget] = arr[: 3 * len(keys)].tolist()
            self.writes += 1
            return
        log.info("b%d of the candidate token store not written: others keep writing", budget)

    def _assemble(
        self,
        budget: int,
        other: tuple[list[str], Any, str] | None,
        new: dict[str, tuple[int, list[int]]],
    ) -> tuple[list[str], Any]:
        """(row keys, array) of the units of ``other`` (a pair on disk), the stored ones, and
        ``new``, each key once."""
        sources = [(self._rows[budget], self._arr[budget], self._head[budget])]
        if other is not None:
            keys, arr, _name = other
            head = arr[: 3 * len(keys)].tolist()
            sources.insert(0, ({k: j for j, k in enumerate(keys)}, arr, head))
        entries: dict[str, tuple[int, Any]] = {}  # key -> (cut length, ids)
        for rows, arr, head in sources:
            for key, j in rows.items():
                if key not in entries:
                    off, n, cut = head[3 * j : 3 * j + 3]
                    entries[key] = (cut, arr[off : off + n])
        for key, (cut, ids) in new.items():
            entries.setdefault(key, (cut, np.asarray(ids, dtype=np.int32)))
        lens = np.array([len(ids) for _cut, ids in entries.values()], dtype=np.int64)
        head_out = np.zeros((len(entries), 3), dtype=np.int64)
        head_out[:, 0] = 3 * len(entries) + np.cumsum(lens) - lens
        head_out[:, 1], head_out[:, 2] = lens, [cut for cut, _ids in entries.values()]
        parts = [ids for _cut, ids in entries.values()]
        return list(entries), np.concatenate([head_out.reshape(-1), *parts]).astype(np.int32)

    def _unlink(self, name: str | None) -> None:
        """Delete a file of the store (best effort)."""
        try:
            if name is not None:
                (self.folder / name).unlink(missing_ok=True)
        except Exception as exc:  # noqa: BLE001
            log.debug("cannot delete %s in %s: %s", name, self.folder, exc)

    def _write_problem(self, exc: Exception) -> None:
        if not self._write_failed:
            log.warning("cannot write the candidate token store in %s (%s: %s): not writing it "
                        "again in this run", self.folder, type(exc).__name__, exc)  # fmt: skip
        self._write_failed = True
        self._pending.clear()

    def invalidate(self, budgets: Sequence[int] | set[int], why: str) -> None:
        """Delete the entries of ``budgets`` (their units proved wrong: ``why``) and write
        nothing more in this run."""
        log.warning("the candidate token store in %s gave wrong units (%s): deleting its entries "
                    "for budgets %s", self.folder, why, sorted(budgets))  # fmt: skip
        for budget in budgets:
            for name in (self._disk_name(budget), self._name.get(budget), f"b{budget}.json"):
                self._unlink(name)
            self._rows.pop(budget, None)
        self._write_failed = True
        self._pending.clear()


def open_store(
    tokenizer: Any, fast: Any, special: Sequence[str], suffix: str, root: Path | None
) -> UnitStore | None:
    """The store of this tokenizer under ``root`` (None: no store)."""
    if root is None or fast is None:
        return None
    key = fingerprint(tokenizer, fast, special, suffix)
    if key is None:
        return None
    _sweep(root, root / key)
    return UnitStore(root / key)


def _sweep(root: Path, keep: Path) -> None:
    """Mark ``keep`` as used (its mtime) and remove the fingerprint folders under ``root`` not
    used for ``STALE_DAYS``, best effort: only files the store writes, a folder once empty."""
    cutoff = time.time() - STALE_DAYS * 86400
    try:
        if keep.is_dir():
            os.utime(keep)
        folders = [p for p in root.iterdir() if p != keep and _FOLDER.fullmatch(p.name)]
    except Exception:  # noqa: BLE001 - no root yet, or unreadable: nothing to sweep
        return
    for folder in folders:
        try:
            if not folder.is_dir() or folder.stat().st_mtime >= cutoff:
                continue
            for path in folder.iterdir():
                if _OURS.fullmatch(path.name):
                    path.unlink(missing_ok=True)
            folder.rmdir()
            log.info("removed the candidate token store %s (unused for %d days)", folder,
                     STALE_DAYS)  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            log.debug("cannot remove the old candidate token store %s: %s", folder, exc)
