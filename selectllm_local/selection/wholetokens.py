"""Which vocabulary tokens a BPE model gives back whole, asked once per tokenizer and kept.

``pieces.PieceEncoder`` runs the tokenizer's BPE model (``model.tokenize``) once per distinct
pre-token of a run. A cold select meets about 170 new pre-tokens per prompt, and those calls
(about 4 us each: the merges, then a Python object per token) were a quarter of its CPU time.
Nearly every pre-token of real text is a vocabulary token of its own, and a BPE model trained by
merging rebuilds such a token from its bytes, but nothing makes every vocabulary keep that (a
token no sequence of its merges reaches, one put in by hand), so the model is asked: the
**table** holds one byte per token id, 1 where ``model.tokenize(token) == [id]`` (and, asked on
the way, each token's length in bytes, which ``candidateids`` sums into the tokens' ends). With
it, a pre-token that is a vocabulary token whose byte is 1 takes its id from one ``token_to_id``
(what ``tokenize`` would have returned, by the table's definition), and any other goes to
``tokenize`` as before.

Asking costs one ``tokenize`` per vocabulary token (about 0.1 s for 27,000 tokens, 0.2 s for
SmolLM2's 49,152), about what the first select pays anyway for the pre-tokens it meets, so it is
done once: at a run's first ``prepare``, kept in the candidate token store's folder of the
tokenizer (``tokencache``: its fingerprint covers the tokenizer's content and this code) as
``whole-<BLAKE2b of its array>.npy`` (per id, its length plus 0x8000 where it is whole), and read
by later runs in about a millisecond. A file whose content does not match its name, or whose
length is not the vocabulary's, is built again; with the store off there is no table, and every
pre-token goes to ``tokenize``.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from selectllm_local.run.store import save_npy
from selectllm_local.selection.tokencache import array_digest

log = logging.getLogger(__name__)

_NAME = re.compile(r"whole-([0-9a-f]{12})\.npy")


class Table(NamedTuple):
    """What the BPE model says of each token id: ``whole`` (one byte per id, 1 where
    ``tokenize`` gives the token back as itself) and ``lengths`` (its string's length, one byte
    per character in the byte alphabet; -1 where no vocabulary token has the id)."""

    whole: bytes
    lengths: Any  # numpy int64


def build(fast: Any) -> Table:
    """The table of Rust tokenizer ``fast``'s BPE model: ``whole[i]`` is 1 where the model
    tokenizes token ``i``'s string to exactly ``[i]``, else 0 (so is an id two strings share,
    whose length is then unknown)."""
    model = fast.model
    vocab = fast.get_vocab(with_added_tokens=False)
    size = max(vocab.values(), default=-1) + 1
    whole = bytearray(size)
    lengths = np.full(size, -1, dtype=np.int64)
    shared: set[int] = set()
    for token, tid in vocab.items():
        if lengths[tid] >= 0:
            shared.add(tid)
        lengths[tid] = len(token)
        got = model.tokenize(token)
        if len(got) == 1 and got[0].id == tid:
            whole[tid] = 1
    for tid in shared:
        whole[tid], lengths[tid] = 0, -1
    return Table(bytes(whole), lengths)


def _codes(table: Table) -> Any:
    """The table as stored: per id, its length (0: none) plus 0x8000 where it is whole."""
    lengths = np.maximum(table.lengths, 0).astype(np.uint16)
    return lengths | (np.frombuffer(table.whole, dtype=np.uint8).astype(np.uint16) << 15)


def _read(folder: Path, size: int) -> Table | None:
    """The table stored in ``folder`` when one is there whole and of ``size`` ids."""
    for path in folder.glob("whole-*.npy"):
        m = _NAME.fullmatch(path.name)
        if m is None:
            continue
        try:
            codes = np.load(path, allow_pickle=False)
        except Exception:  # noqa: BLE001 - damaged: built again
            continue
        ok = codes.dtype == np.uint16 and codes.ndim == 1 and len(codes) == size
        if ok and array_digest(codes)[:12] == m.group(1):
            lengths = (codes & 0x7FFF).astype(np.int64)
            lengths[lengths == 0] = -1
            return Table((codes >> 15).astype(np.uint8).tobytes(), lengths)
    return None


def table(folder: Path, fast: Any) -> Table | None:
    """The table of ``fast`` kept in ``folder`` (the store's folder of this tokenizer), built
    and written there when missing or damaged; None where the model cannot be asked."""
    try:
        size = max(fast.get_vocab_size(with_added_tokens=False), 0)
        found = _read(folder, size) if folder.is_dir() else None
        if found is not None:
            return found
        t0 = time.perf_counter()
        made = build(fast)
    except Exception as exc:  # noqa: BLE001 - an unusual model: every pre-token to tokenize
        log.info("no whole-token table for this tokenizer (%s: %s)", type(exc).__name__, exc)
        return None
    if len(made.whole) != size or int(made.lengths.max(initial=0)) >= 0x8000:
        return made  # ids beyond the stated size, or a token too long to store: not kept
    log.info("asked the tokenizer's BPE model for its whole tokens once (%d tokens, %.2f s); "
             "kept in %s", size, time.perf_counter() - t0, folder)  # fmt: skip
    try:
        folder.mkdir(parents=True, exist_ok=True)
        codes = _codes(made)
        save_npy(folder / f"whole-{array_digest(codes)[:12]}.npy", codes)
    except Exception as exc:  # noqa: BLE001 - a cache: used in this run, asked again next
        log.info("could not keep the whole-token table in %s: %s", folder, exc)
    return made


def discard(folder: Path) -> None:
    """Delete the tables kept in ``folder`` (best effort): the encoder they served disagreed
    with the tokenizer."""
    try:
        for path in folder.glob("whole-*.npy"):
            if _NAME.fullmatch(path.name):
                path.unlink(missing_ok=True)
    except Exception as exc:  # noqa: BLE001
        log.debug("cannot delete the whole-token tables in %s: %s", folder, exc)
