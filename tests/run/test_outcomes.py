"""Typed outcomes: the error kind is named where the parser finds the error, old answer logs
still count their errors, and a summary's ``to_dict()`` is the JSON users read."""

from __future__ import annotations

import pytest

from selectllm_local.records import SubsetResult
from selectllm_local.selection.parse import parse_ids, parse_reasons
from selectllm_local.summaries import SelectionCounts


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ("", "empty"),
        ("I like the third one best.", "no_ids"),
        ('["x", 2]', "not_integer"),
        ("[0, 2]", "zero"),
        ("[2, 9]", "out_of_range"),
        ("[2, 2]", "duplicate"),
        ("[2]", "too_few"),
        ("[1, 2, 3]", "too_many"),
    ],
)
def test_the_parser_names_each_error_it_finds(answer: str, kind: str) -> None:
    for parse in (parse_ids, parse_reasons):
        res = parse(answer, 4, 2)
        assert not res.ok and res.kind == kind, (answer, res)
    assert parse_ids("[1, 2]", 4, 2).kind is None


def test_an_answer_log_without_kinds_still_counts_its_errors() -> None:
    """responses.jsonl lines written before kinds were recorded: the kinds come from the
    messages' fixed wording, so a resumed run's counts match the run that wrote them."""
    from selectllm_local.selection.picks import NO_ANSWER, count_results

    old = {"subset_id": 1, "round": 1, "picks": [3], "positions": [1], "raw": ["", "[9]", "?"],
           "attempts": 3, "fallback": True, "errors": ["empty answer", "id out of range 1..4: 9",
           NO_ANSWER]}  # fmt: skip
    r = SubsetResult.from_dict(old)
    assert r.error_kinds == ["empty", "out_of_range", "no_answer"]
    assert SubsetResult.from_dict(r.to_dict()) == r  # new lines carry the kinds
    counts = SelectionCounts.from_dict(count_results([r]))
    assert counts.errors == {"empty": 1, "no_answer": 1, "out_of_range": 1}
    assert counts.fallback == 1 and counts.ties is None and "ties" not in counts.to_dict()


def test_finetune_summary_reports_the_trainer_only_when_it_ran(tmp_path) -> None:  # noqa: ANN001
    import json

    from selectllm_local.training.finetune import finetune_summary

    adapter = tmp_path / "adapter"
    bare = finetune_summary(tmp_path, adapter)
    assert bare.to_dict() == {
        "adapter": str(adapter),
        "train_log": str(tmp_path / "train_log.jsonl"),
    }
    (tmp_path / "train_summary.json").write_text(
        json.dumps({"train_loss": 1.5, "optimizer_steps": 3, "seconds": 2.0, "other": 1})
    )
    done = finetune_summary(tmp_path, adapter).to_dict()
    assert list(done) == ["adapter", "train_log", "train_loss", "optimizer_steps", "seconds"]
    assert done["train_loss"] == 1.5 and done["optimizer_steps"] == 3
