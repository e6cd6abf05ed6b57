"""Answer parsing: every shape of good answer is read, every bad one is rejected with a reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selectllm_local.selection.parse import parse_ids, parse_reasons


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("[2, 7]", [2, 7]),
        ("[7,2]", [7, 2]),
        ("I would choose [3, 11] because they are detailed.", [3, 11]),
        ('{"ids": [4, 1]}', [4, 1]),
        ('```json\n{"picks": [{"id": 5, "reason": "x"}, {"id": 6, "reason": "y"}]}\n```', [5, 6]),
        ('[{"id": "9", "reason": "deep"}, {"id": 2}]', [9, 2]),
        ("2 and 7", [2, 7]),
        ("Candidates 12, 4.", [12, 4]),
        ("Restating [1, 2, 3]... final answer: [8, 10]", [8, 10]),
    ],
)
def test_good_answers(text: str, ids: list[int]) -> None:
    res = parse_ids(text, 12, 2)
    assert res.ok, res.error
    assert res.ids == ids


@pytest.mark.parametrize(
    ("text", "k", "error"),
    [
        ("", 2, "empty answer"),
        ("   \n\n", 2, "empty answer"),
        ("[0, 3]", 2, "id 0 given"),
        ("[3, 13]", 2, "id out of range 1..12: 13"),
        ("[-1, 3]", 2, "id out of range"),
        ("[99]", 1, "id out of range 1..12: 99"),
        ("[3, 3]", 2, "duplicate id: 3"),
        ("[3]", 2, "too few ids: 1 given, 2 asked"),
        ("[3, 4, 5]", 2, "too many ids: 3 given, 2 asked"),
        ("I cannot decide between these candidates without more context.", 1, "no identifiers"),
        ('{"ids": ["three"]}', 1, "not an integer id"),
        (
            "Candidate 3 is clearly better than candidate 5 because it asks for more detail, so 3.",
            1,
            "no identifiers",
        ),
    ],
)
def test_bad_answers(text: str, k: int, error: str) -> None:
    res = parse_ids(text, 12, k)
    assert not res.ok
    assert res.ids == []
    assert error in res.error


def test_non_utf8_bytes_are_rejected_not_crashing() -> None:
    res = parse_ids(b"\xff\xfe\x80\x81garbage", 12, 2)
    assert not res.ok and res.error == "no identifiers found"
    ok = parse_ids(b"\xff [3, 4]", 12, 2)
    assert ok.ok and ok.ids == [3, 4]


def test_salvage_keeps_distinct_in_range_ids() -> None:
    res = parse_ids("[3, 3, 99, 5, 0]", 12, 2)
    assert not res.ok
    assert res.salvage == [3, 5]


def test_reasons_are_attached_to_ids() -> None:
    text = (
        '[{"id": 4, "reason": "Needs multi-step reasoning."}, {"id": 1, "reason": "Rare topic."}]'
    )
    res = parse_reasons(text, 5, 2)
    assert res.ok
    assert res.reasons == {4: "Needs multi-step reasoning.", 1: "Rare topic."}
    bare = parse_reasons("[4, 1]", 5, 2)
    assert bare.ok and bare.reasons == {4: "", 1: ""}


@given(
    n=st.integers(1, 40),
    data=st.data(),
)
def test_any_valid_list_round_trips(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, n))
    ids = data.draw(st.permutations(list(range(1, n + 1))))[:k]
    res = parse_ids(f"Answer: [{', '.join(map(str, ids))}]", n, k)
    assert res.ok and res.ids == ids


@given(text=st.text(max_size=200), n=st.integers(1, 20), k=st.integers(1, 5))
def test_whatever_the_text_accepted_ids_are_valid(text: str, n: int, k: int) -> None:
    res = parse_ids(text, n, k)
    if res.ok:
        assert len(res.ids) == k
        assert len(set(res.ids)) == k
        assert all(1 <= i <= n for i in res.ids)
    else:
        assert res.ids == [] and res.error
