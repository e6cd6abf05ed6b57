"""Read the selector's answer and decide whether it is a valid pick.

The official SelectLLM code turned unparseable answers into fixed positions, let id 0 mean
"last", kept duplicates and crashed on out-of-range ids after every call had been paid for. Here
an answer is either *valid* (exactly ``k`` distinct identifiers in ``1..n``) or it is rejected
with a one-line reason that the selection stage counts, retries and finally replaces with a
recorded fallback. Nothing is guessed silently.

Accepted shapes, in the order they are tried:

1. JSON anywhere in the text: ``[3, 7]``, ``{"ids": [3, 7]}``, ``[{"id": 3, "reason": "..."}]``,
   ``{"picks": [{"id": 3, "reason": "..."}]}``.
2. A bracketed list inside prose: ``I choose [3, 7] because ...`` (the last bracketed list wins,
   since models restate the question first).
3. Bare numbers in a short answer: ``3 and 7``, ``Candidates 3, 7.``

Whatever shape matched, the ids are validated the same way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_BRACKET_LIST = re.compile(r"\[\s*(-?\d+(?:\s*,\s*-?\d+)*)\s*,?\s*\]")
_INT = re.compile(r"-?\d+")
# A bare-number answer must be short: a paragraph of prose that happens to contain numbers
# ("candidate 3 is better than 5") is not an answer.
_MAX_BARE_CHARS = 80


@dataclass
class ParseResult:
    """Outcome of reading one answer.

    ``ids`` are 1-based display identifiers in the order the model gave them (empty when
    ``error`` is set). ``salvage`` keeps the distinct in-range ids of a rejected answer, which the
    fallback may reuse. ``reasons`` maps id -> one-sentence reason (reasons prompt only).
    """

    ids: list[int]
    error: str | None = None
    reasons: dict[int, str] = field(default_factory=dict)
    salvage: list[int] = field(default_factory=list)
    kind: str | None = None
    """The error's stable name for the counts (``summary.json`` ``counts.errors``), set here
    where the error is found: empty, no_ids, not_integer, zero, out_of_range, duplicate,
    too_few, too_many."""

    @property
    def ok(self) -> bool:
        return self.error is None


def _as_text(text: str | bytes) -> str:
    if isinstance(text, bytes):
        return text.decode("utf-8", errors="replace")
    return text


def _json_candidates(text: str) -> list[Any]:
    """Every JSON value that starts at a ``[`` or ``{`` in ``text`` (outermost first)."""
    decoder = json.JSONDecoder()
    found: list[Any] = []
    i = 0
    while i < len(text):
        if text[i] in "[{":
            try:
                value, end = decoder.raw_decode(text, i)
            except ValueError:
                i += 1
                continue
            found.append(value)
            i = end
        else:
            i += 1
    return found


def _ids_from_json(value: Any) -> tuple[list[Any], dict[Any, str]] | None:
    """Pull an id list (and reasons) out of one decoded JSON value, or None if it has none."""
    if isinstance(value, dict):
        for key in ("ids", "picks", "selected", "selection", "answer", "choices"):
            if key in value:
                return _ids_from_json(value[key])
        if "id" in value:
            return _ids_from_json([value])
        return None
    if not isinstance(value, list) or not value:
        return None
    ids: list[Any] = []
    reasons: dict[Any, str] = {}
    for el in value:
        if isinstance(el, dict) and "id" in el:
            ids.append(el["id"])
            if isinstance(el.get("reason"), str):
                reasons[el["id"]] = el["reason"].strip()
        elif isinstance(el, (int, str)) and not isinstance(el, bool):
            ids.append(el)
        else:
            return None
    return ids, reasons


def _to_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


def _extract(text: str) -> tuple[list[Any], dict[Any, str]] | None:
    for value in reversed(_json_candidates(text)):
        got = _ids_from_json(value)
        if got is not None:
            return got
    lists = _BRACKET_LIST.findall(text)
    if lists:
        return [int(x) for x in _INT.findall(lists[-1])], {}
    stripped = text.strip()
    if stripped and len(stripped) <= _MAX_BARE_CHARS:
        nums = _INT.findall(stripped)
        if nums:
            return [int(x) for x in nums], {}
    return None


def validate_ids(raw_ids: list[Any], n_candidates: int, k: int) -> ParseResult:
    """Check ``raw_ids`` is exactly ``k`` distinct integers in ``1..n_candidates``."""
    ints: list[int] = []
    bad: list[str] = []
    for v in raw_ids:
        iv = _to_int(v)
        if iv is None:
            bad.append(repr(v))
        else:
            ints.append(iv)
    salvage: list[int] = []
    for iv in ints:
        if 1 <= iv <= n_candidates and iv not in salvage:
            salvage.append(iv)
    if bad:
        return ParseResult(
            [], f"not an integer id: {', '.join(bad[:3])}", salvage=salvage, kind="not_integer"
        )
    if 0 in ints:
        return ParseResult([], "id 0 given; ids start at 1", salvage=salvage, kind="zero")
    out = sorted({i for i in ints if not 1 <= i <= n_candidates})
    if out:
        shown = ", ".join(map(str, out[:5]))
        return ParseResult(
            [], f"id out of range 1..{n_candidates}: {shown}", salvage=salvage, kind="out_of_range"
        )
    if len(set(ints)) != len(ints):
        dup = sorted({i for i in ints if ints.count(i) > 1})
        return ParseResult(
            [], f"duplicate id: {', '.join(map(str, dup))}", salvage=salvage, kind="duplicate"
        )
    if len(ints) < k:
        return ParseResult(
            [], f"too few ids: {len(ints)} given, {k} asked", salvage=salvage, kind="too_few"
        )
    if len(ints) > k:
        return ParseResult(
            [], f"too many ids: {len(ints)} given, {k} asked", salvage=salvage, kind="too_many"
        )
    return ParseResult(ints, None, salvage=salvage)


def parse_ids(text: str | bytes, n_candidates: int, k: int) -> ParseResult:
    """Parse an ids-only answer (``[3, 7]`` and the looser shapes above) and validate it."""
    text = _as_text(text)
    if not text.strip():
        return ParseResult([], "empty answer", kind="empty")
    got = _extract(text)
    if got is None:
        return ParseResult([], "no identifiers found", kind="no_ids")
    raw_ids, reasons = got
    result = validate_ids(raw_ids, n_candidates, k)
    if result.ok:
        result.reasons = {iv: r for key, r in reasons.items() if (iv := _to_int(key)) in result.ids}
    return result


def parse_reasons(text: str | bytes, n_candidates: int, k: int) -> ParseResult:
    """Parse a reasons answer (``[{"id": 3, "reason": "..."}]``); every pick needs a reason.

    An answer whose ids are valid but whose reasons are missing is still accepted (the ids are
    what matter); the missing reasons stay empty strings and are not an error.
    """
    result = parse_ids(text, n_candidates, k)
    if result.ok:
        for iv in result.ids:
            result.reasons.setdefault(iv, "")
    return result
