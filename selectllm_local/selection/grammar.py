"""The answer grammar of generative selection: a regex admitting exactly ``k`` distinct ids of
``1..n`` (optionally with a reason each), sized so the engine compiles it in well under a second.
"""

from __future__ import annotations

import functools

from selectllm_local.backends.base import Constraint

# Largest constraint regex built, in characters. Compile time grows about linearly with it:
# measured with xgrammar 0.x (vLLM 0.32's structured-outputs backend for regexes), SmolLM2's 49k
# vocabulary, one thread on a busy 2-core CPU: any-order (14, 3) 6.6k chars 54 ms, (20, 3) 20k
# 100-120 ms, (32, 3) 89k 625 ms, (51, 3) 373k 2.9 s; increasing-order (32, 3) 2.9k 30 ms,
# (51, 3) 7.6k 82 ms, (32, 4) 18k 100 ms; every ids grammar this cap admits, n <= 51, compiles in
# <= 0.1 s. vLLM compiles each distinct regex once per engine. (The reasons grammar costs 3-9 s
# per shape, from its bounded reason text, whatever n and k.)
MAX_REGEX_CHARS = 60_000


class _TooLarge(Exception):
    pass


def _id_item(i: int, reasons: bool) -> str:
    if reasons:
        return r'\{"id": ' + str(i) + r', "reason": "[^"\\\n]{1,120}"\}'
    return str(i)


def _any_order(n: int, k: int, reasons: bool, limit: int) -> str:
    """Trie over ordered picks (n!/(n-k)! leaves): every order, never a repeated id."""
    size = [0]  # characters emitted so far (exact); stop as soon as it passes ``limit``

    def add(chars: int) -> None:
        size[0] += chars
        if size[0] > limit:
            raise _TooLarge

    def trie(used: tuple[int, ...]) -> str:
        alts = []
        for i in range(1, n + 1):
            if i in used:
                continue
            item = _id_item(i, reasons)
            if len(used) + 1 == k:
                add(len(item) + 1)
                alts.append(item)
            else:
                add(len(item) + 3)
                alts.append(item + ", " + trie((*used, i)))
        add(4)
        return "(?:" + "|".join(alts) + ")"

    return trie(())


def _increasing(n: int, k: int, reasons: bool, limit: int) -> str:
    """Strictly increasing ids (hence distinct), split at the middle pick.

    ``k`` ids in (lo, hi) = (left half in (lo, m)) m (right half in (m, hi)) over every middle
    value ``m``: O(n^2) for k = 3 instead of the C(n, k) leaves of a plain trie.
    """
    size = [0]

    def add(chars: int) -> None:
        size[0] += chars
        if size[0] > limit:
            raise _TooLarge

    def seq(j: int, lo: int, hi: int) -> str:
        if j == 0:
            return ""
        mid = (j - 1) // 2  # picks left of the middle one
        alts = []
        for m in range(lo + 1 + mid, hi - (j - 1 - mid)):
            left = seq(mid, lo, m)
            right = seq(j - 1 - mid, m, hi)
            item = _id_item(m, reasons)
            add(len(item) + 1 + (2 if left else 0) + (2 if right else 0))
            alts.append((left + ", " if left else "") + item + (", " + right if right else ""))
        add(4)
        return "(?:" + "|".join(alts) + ")"

    return seq(k, 0, n + 1)


@functools.lru_cache(maxsize=1024)
def _ids_grammar(n: int, k: int, reasons: bool, limit: int) -> tuple[str | None, bool]:
    """(regex or None, whether it demands increasing order), memoised: built once per shape."""
    if k < 1 or k > n:
        raise ValueError(f"cannot pick {k} of {n}")
    for build, ordered in ((_any_order, False), (_increasing, True)):
        try:
            return r"\[" + build(n, k, reasons, limit) + r"\]", ordered and k > 1
        except _TooLarge:
            continue
    return None, False


def id_constraint(
    n: int, k: int, *, reasons: bool = False, max_regex_chars: int = MAX_REGEX_CHARS
) -> Constraint | None:
    """A regex admitting only answers of exactly ``k`` distinct ids in ``1..n``, or None.

    Any order while that regex stays under ``max_regex_chars`` (measured on the regex as built,
    not estimated); otherwise increasing order only, which the prompt then asks for (see
    ``ids_ordered``); when even that is too large, None: the answer is generated unconstrained
    and validation rejects a bad one (retry, then fallback). No returned grammar ever admits a
    repeated id. Sizes (ids only): (14, 3), the paper's Dolly prompt, any order in 6.6k characters;
    (32, 3) and (51, 3) in any order would be 89k and 373k, so increasing: 2.9k and 7.6k; (51, 4)
    and larger picks from 51 get no grammar. Compile times: see ``MAX_REGEX_CHARS``.
    """
    regex, _ordered = _ids_grammar(n, k, reasons, max_regex_chars)
    return Constraint(regex=regex) if regex is not None else None


def ids_ordered(n: int, k: int, *, reasons: bool = False, constrained: bool = True) -> bool:
    """Whether the answer grammar for (n, k) admits increasing ids only (the prompt must say so)."""
    if not constrained:
        return False
    return _ids_grammar(n, k, reasons, MAX_REGEX_CHARS)[1]
