"""The candidate token store as a run uses it: open it at the first round (and give the
pre-token encoder the tokenizer's whole-token table kept beside it, ``wholetokens``), fill units
from it (checking the first ``STORE_CHECKS`` per budget against the tokenizer), hand it new ones,
write them once per round, and drop it when its units prove wrong (``tokencache`` is the store
itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selectllm_local.selection import tokencache, wholetokens

# Units read from the store compared with the tokenizer's, per budget, at the start of a run.
STORE_CHECKS = 16


class StoredUnits:
    """The store half of ``candidateids.CandidateTokens`` (which provides the attributes and the
    text and tokenizer methods declared here)."""

    special: list[str]
    _fast: Any
    _pieces: Any  # a pieces.PieceEncoder, or None
    _derive_checks: int  # -1: counts of cut candidates are not derived in this run
    _units: dict[tuple[int, int], tuple[str, bool, list[int]]]

    def __init__(self, tokenizer: Any, store_root: Path | None) -> None:
        self._store_args: tuple[Any, Path] | None = (
            (tokenizer, store_root) if store_root is not None else None
        )
        self.store: tokencache.UnitStore | None = None
        self._store_checks: dict[int, int] = {}  # budget -> stored units still to check
        self._keys: dict[int, str] = {}  # pool index -> the store's key of its text
        self._token_lengths = None  # from the whole-token table, once the store is open

    def _text(self, idx: int) -> str:
        raise NotImplementedError

    def _encode(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def _encode_rust(self, texts: list[str]) -> list[list[int]]:
        """The tokenizer's own ids, the reference stored units are checked against."""
        raise NotImplementedError

    def flush_store(self) -> None:
        """Write the units made since the last write to the store (one write per budget)."""
        if self.store is not None:
            self.store.flush()

    def _key(self, idx: int) -> str:
        key = self._keys.get(idx)
        if key is None:
            key = self._keys[idx] = tokencache.text_key(self._text(idx))
        return key

    def _from_store(self, indices: Sequence[int], budget: int) -> bool:
        """Fill the units of ``indices`` found in the store; whether a store is open."""
        if self._store_args is not None:
            tokenizer, root = self._store_args
            self._store_args = None
            self.store = tokencache.open_store(tokenizer, self._fast, self.special, "\n", root)
            if self.store is not None and (self._pieces is not None or self._derive_checks >= 0):
                kept = wholetokens.table(self.store.folder, self._fast)
                if self._pieces is not None:
                    self._pieces.use_whole(kept.whole if kept is not None else None)
                self._token_lengths = kept.lengths if kept is not None else None
        if self.store is None:
            return False
        wanted = {i: self._key(i) for i in dict.fromkeys(indices) if (i, budget) not in self._units}
        found = self.store.read_units(budget, {k: self._text(i) for i, k in wanted.items()})
        if not self._check_stored(found, budget):
            return False
        for idx, key in wanted.items():
            if key in found:
                self._units[(idx, budget)] = found[key]
        return True

    def _check_stored(self, found: dict[str, tuple[str, bool, list[int]]], budget: int) -> bool:
        """Whether the first ``STORE_CHECKS`` stored units of ``budget`` read in this run equal
        the tokenizer's (one batched call); if not, the store's entry is deleted and the run
        uses no store (a stale or damaged store must not reach a prompt)."""
        left = self._store_checks.get(budget, STORE_CHECKS)
        check = list(found)[:left]
        if not check:
            return True
        assert self.store is not None
        self._store_checks[budget] = left - len(check)
        real = self._encode_rust([found[k][0] + "\n" for k in check])
        if all(found[k][2] == ids for k, ids in zip(check, real, strict=True)):
            return True
        self.store.invalidate({budget}, f"a unit of budget {budget} differs from the tokenizer's")
        self.store = None
        return False

    def drop_store(self, why: str) -> None:
        """Delete what this run read from the store (its units proved wrong: ``why``) and use
        no store for the rest of the run."""
        if self.store is not None and self.store.hits:
            self.store.invalidate(self.store.hit_budgets, why)
            self.store = None

    def _to_store(self, fresh: list[int], budget: int) -> None:
        assert self.store is not None
        self.store.write_units(budget, {self._key(i): self._units[(i, budget)] for i in fresh})
