"""Pool loading: every format and schema, duplicates and empties, and every bad-input message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selectllm_local.data.pool import FieldMap, embedding_text, load_pool
from selectllm_local.errors import UserError
from selectllm_local.records import PoolItem
from tests.helpers import ALPACA, DOLLY, requires_shared_data

DOLLY_ROWS = [
    {"instruction": "Name three rivers.", "context": "", "response": "Nile, Amazon, Danube.", "category": "brainstorming"},
    {"instruction": "Summarise the text.", "context": "Cats sleep a lot.", "response": "Cats sleep.", "category": "summarization"},
    {"instruction": "  Name three   rivers. ", "context": "", "response": "Dup.", "category": "brainstorming"},
    {"instruction": "   ", "context": "x", "response": "empty", "category": "open_qa"},
    {"instruction": "Summarise the text.", "context": "Dogs bark.", "response": "Dogs bark.", "category": "summarization"},
]  # fmt: skip
ALPACA_ROWS = [
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat, move, sleep."},
    {"instruction": "Translate to French.", "input": "Hello", "output": "Bonjour"},
]  # fmt: skip


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


def test_dolly_jsonl_schema_dedup_and_empty(tmp_path: Path) -> None:
    items, stats = load_pool(write_jsonl(tmp_path / "pool.jsonl", DOLLY_ROWS))
    assert stats.schema == "dolly" and stats.format == "jsonl"
    assert (stats.rows_read, stats.kept, stats.duplicates, stats.empty) == (5, 3, 1, 1)
    assert [i.index for i in items] == [0, 1, 2]
    assert [i.source_row for i in items] == [1, 2, 5]  # 1-based lines
    first = items[0]
    assert first.instruction == "Name three rivers." and first.output == "Nile, Amazon, Danube."
    assert first.category == "brainstorming" and first.raw == DOLLY_ROWS[0]
    # Same instruction, different context: not a duplicate.
    assert items[1].input == "Cats sleep a lot." and items[2].input == "Dogs bark."
    assert len({i.uid for i in items}) == 3


def test_uids_are_stable_across_reordering(tmp_path: Path) -> None:
    a, _ = load_pool(write_jsonl(tmp_path / "a.jsonl", DOLLY_ROWS))
    b, _ = load_pool(write_jsonl(tmp_path / "b.jsonl", DOLLY_ROWS[::-1]))
    assert {i.uid for i in a} == {i.uid for i in b}


def test_alpaca_json_list(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(ALPACA_ROWS, indent=2), "utf-8")
    items, stats = load_pool(path)
    assert stats.schema == "alpaca" and stats.format == "json" and stats.kept == 2
    assert items[1].input == "Hello" and items[1].output == "Bonjour"
    assert items[0].source_row == 0 and items[0].category is None


def test_json_suffix_holding_jsonl(tmp_path: Path) -> None:
    items, stats = load_pool(write_jsonl(tmp_path / "lines.json", ALPACA_ROWS))
    assert stats.format == "jsonl" and len(items) == 2


@pytest.mark.parametrize(
    ("style", "turns"),
    [
        ("from/value", [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello!"}]),
        ("role/content", [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "More"}]),
    ],
)  # fmt: skip
def test_sharegpt_conversations(tmp_path: Path, style: str, turns: list) -> None:
    key = "conversations" if style == "from/value" else "messages"
    rows = [{"id": "a", key: turns}, {"id": "b", key: [{"from": "gpt", "value": "no user"}]}]
    items, stats = load_pool(write_jsonl(tmp_path / "chat.jsonl", rows))
    assert stats.schema == "sharegpt" and stats.empty == 1
    assert items[0].instruction == "Hi?" and items[0].output == "Hello!" and items[0].input == ""


def test_csv_and_tsv(tmp_path: Path) -> None:
    csv_path = tmp_path / "pool.csv"
    csv_path.write_text(
        'instruction,input,output\n"Multi\nline question",,yes\nSecond,ctx,no\n', "utf-8"
    )
    items, stats = load_pool(csv_path)
    assert stats.format == "csv" and stats.schema == "alpaca"
    assert items[0].instruction == "Multi\nline question" and items[0].source_row == 2
    assert items[1].source_row == 4 and items[1].input == "ctx"
    tsv = tmp_path / "pool.tsv"
    tsv.write_text("prompt\tanswer\nWhat is 2+2?\t4\n", "utf-8")
    items, stats = load_pool(tsv, fields=FieldMap(instruction="prompt", output="answer"))
    assert stats.schema == "custom" and items[0].output == "4"


def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "pool.parquet"
    pq.write_table(pa.Table.from_pylist(DOLLY_ROWS), path)
    items, stats = load_pool(path)
    assert stats.format == "parquet" and stats.schema == "dolly" and stats.kept == 3


def _gzip(path: Path) -> Path:
    import gzip

    gz = path.with_name(path.name + ".gz")
    gz.write_bytes(gzip.compress(path.read_bytes(), mtime=0))
    return gz


def _same_load(plain: Path, **kw) -> None:
    """The .gz copy loads exactly like the plain file: items, ids, rows, format and schema."""
    a, sa = load_pool(plain, **kw)
    b, sb = load_pool(_gzip(plain), **kw)
    assert [(i.uid, i.source_row, i.instruction, i.input, i.output, i.raw) for i in a] == [
        (i.uid, i.source_row, i.instruction, i.input, i.output, i.raw) for i in b
    ]
    assert (sa.format, sa.schema, sa.rows_read, sa.duplicates, sa.empty) == (
        sb.format, sb.schema, sb.rows_read, sb.duplicates, sb.empty,
    )  # fmt: skip
    assert sb.path.endswith(".gz") and len(a) > 0


def test_gzip_jsonl_json_csv_tsv_load_like_the_plain_files(tmp_path: Path) -> None:
    _same_load(write_jsonl(tmp_path / "pool.jsonl", DOLLY_ROWS))
    (tmp_path / "alpaca.json").write_text(json.dumps(ALPACA_ROWS, indent=2), "utf-8")
    _same_load(tmp_path / "alpaca.json")
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in ALPACA_ROWS))
    _same_load(tmp_path / "lines.json")  # a .json.gz holding JSON lines
    (tmp_path / "pool.csv").write_text(
        'instruction,input,output\n"Multi\nline question",,yes\nSecond,ctx,no\n', "utf-8"
    )
    _same_load(tmp_path / "pool.csv")
    (tmp_path / "pool.tsv").write_text("prompt\tanswer\nWhat is 2+2?\t4\n", "utf-8")
    _same_load(tmp_path / "pool.tsv", fields=FieldMap(instruction="prompt", output="answer"))
    items, stats = load_pool(tmp_path / "pool.csv.gz")
    assert stats.format == "csv" and items[1].source_row == 4 and items[1].input == "ctx"


@pytest.mark.parametrize(
    ("name", "content", "where"),
    [
        ("bad.jsonl", json.dumps(ALPACA_ROWS[0]) + '\n{"instruction": "oops",\n', "line 2"),
        ("bad.json", '[{"instruction": "a"},\n {"instruction": }]', "line 2"),
        ("bad.csv", "instruction,output\nfine,yes\ntoo,many,fields\n", "line 3"),
    ],
)
def test_gzip_errors_name_file_and_line(
    tmp_path: Path, name: str, content: str, where: str
) -> None:
    plain = tmp_path / name
    plain.write_text(content, "utf-8")
    gz = _gzip(plain)
    with pytest.raises(UserError) as err:
        load_pool(gz)
    msg = str(err.value)
    assert str(gz) in msg and where in msg


def test_gzip_broken_or_not_utf8_or_parquet(tmp_path: Path) -> None:
    import gzip

    broken = tmp_path / "pool.jsonl.gz"
    broken.write_bytes(gzip.compress(b'{"instruction": "a"}\n' * 50)[:-20])  # truncated
    with pytest.raises(UserError, match=r"pool\.jsonl\.gz: not a readable gzip file"):
        load_pool(broken)
    plain_text = tmp_path / "text.jsonl.gz"
    plain_text.write_text('{"instruction": "not compressed"}\n')
    with pytest.raises(UserError, match="not a readable gzip file"):
        load_pool(plain_text)
    latin = tmp_path / "latin1.jsonl.gz"
    latin.write_bytes(gzip.compress(b'{"instruction": "ok"}\n{"instruction": "caf\xe9"}\n'))
    with pytest.raises(UserError) as err:
        load_pool(latin)
    msg = str(err.value)
    assert str(latin) in msg and "byte 42" in msg and "line 2" in msg and "gunzip -c" in msg
    pq = tmp_path / "pool.parquet.gz"
    pq.write_bytes(gzip.compress(b"x"))
    with pytest.raises(UserError, match=r"unknown file type '\.parquet\.gz'"):
        load_pool(pq)


def test_datasets_folder_and_dict(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_list(ALPACA_ROWS)
    ds.save_to_disk(str(tmp_path / "ds"))
    items, stats = load_pool(tmp_path / "ds")
    assert (
        stats.format == "datasets" and [i.instruction for i in items][1] == "Translate to French."
    )
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dd"))
    assert load_pool(tmp_path / "dd")[1].kept == 2
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "only_test"))
    with pytest.raises(UserError, match="train"):
        load_pool(tmp_path / "only_test")


def test_custom_fields(tmp_path: Path) -> None:
    rows = [{"question": "Why is the sky blue?", "extra": "physics", "answer": "Rayleigh."}]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    fm = FieldMap(instruction="question", input="extra", output="answer")
    items, stats = load_pool(path, fields=fm)
    assert stats.schema == "custom"
    assert stats.fields == {
        "instruction": "question",
        "input": "extra",
        "output": "answer",
        "category": None,
    }
    assert (items[0].instruction, items[0].input, items[0].output) == (
        "Why is the sky blue?",
        "physics",
        "Rayleigh.",
    )


def test_embedding_text_matches_paper_format() -> None:
    with_input = PoolItem(0, "u", 1, "Summarise.", input="Cats sleep.")
    assert (
        embedding_text(with_input)
        == "### Instruction: Summarise.\n\n### Input: Cats sleep.\n\n### Response:"
    )
    assert embedding_text(PoolItem(0, "u", 1, "Hi")) == "### Instruction: Hi\n\n### Response:"


# -- bad input ------------------------------------------------------------------------------


def test_malformed_json_line_names_line_and_flag(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps(ALPACA_ROWS[0])
        + "\n"
        + '{"instruction": "oops",\n'
        + json.dumps(ALPACA_ROWS[1])
        + "\n"
    )
    with pytest.raises(UserError) as err:
        load_pool(path)
    msg = str(err.value)
    assert str(path) in msg and "line 2" in msg and "--skip-bad-rows" in msg
    items, stats = load_pool(path, skip_bad_rows=True)
    assert len(items) == 2 and stats.bad_rows == [{"row": 2, "error": stats.bad_rows[0]["error"]}]
    assert [i.source_row for i in items] == [1, 3]


def test_wrong_field_type_names_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [ALPACA_ROWS[0], {"instruction": ["a", "list"]}])
    with pytest.raises(UserError, match=r"line 2: field 'instruction' \(instruction\) is a list"):
        load_pool(path)
    assert load_pool(path, skip_bad_rows=True)[1].bad_rows[0]["row"] == 2


def test_non_object_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [ALPACA_ROWS[0], [1, 2]])
    with pytest.raises(UserError, match="line 2: expected an object"):
        load_pool(path)


def test_no_known_fields_lists_fields_found(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(UserError) as err:
        load_pool(path)
    msg = str(err.value)
    assert str(path) in msg and "answer, question" in msg and "--instruction-field" in msg
    with pytest.raises(UserError, match="'prompt' given by --instruction-field"):
        load_pool(path, fields=FieldMap(instruction="prompt"))


def test_schema_detected_after_sparse_first_rows(tmp_path: Path) -> None:
    rows = [{"meta": 1}, *ALPACA_ROWS]
    items, stats = load_pool(write_jsonl(tmp_path / "p.jsonl", rows))
    assert stats.schema == "alpaca" and stats.kept == 2 and stats.empty == 1


@pytest.mark.parametrize("content", ["", "\n\n  \n", "[]"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / ("empty.json" if content == "[]" else "empty.jsonl")
    path.write_text(content)
    with pytest.raises(UserError, match="empty") as err:
        load_pool(path)
    assert str(path) in str(err.value)


def test_all_instructions_empty(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"instruction": "", "output": "x"}])
    with pytest.raises(UserError, match="non-empty instruction in field 'instruction'"):
        load_pool(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found: .*nope.jsonl"):
        load_pool(tmp_path / "nope.jsonl")


def test_non_utf8_names_byte_and_line_and_iconv(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"instruction": "ok"}\n{"instruction": "caf\xe9"}\n')
    with pytest.raises(UserError) as err:
        load_pool(path)
    msg = str(err.value)
    assert "byte 42" in msg and "line 2" in msg and "iconv" in msg and str(path) in msg


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "pool.xlsx"
    path.write_text("x")
    with pytest.raises(UserError, match=r"unknown file type '\.xlsx'.*\.jsonl"):
        load_pool(path)


def test_plain_folder_is_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="save_to_disk"):
        load_pool(tmp_path)


def test_broken_json_list_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"instruction": "a"},\n  {"instruction": }\n]\n')
    with pytest.raises(UserError, match="line 3 column"):
        load_pool(path)


def test_csv_row_with_extra_fields(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("instruction,output\nfine,yes\ntoo,many,fields\n")
    with pytest.raises(UserError, match="line 3: has 3 fields, the header has 2"):
        load_pool(path)
    assert load_pool(path, skip_bad_rows=True)[1].kept == 1


# -- real pools -----------------------------------------------------------------------------


def test_real_dolly_shipped_gz() -> None:
    items, stats = load_pool(DOLLY)
    assert DOLLY.name.endswith(".jsonl.gz") and stats.format == "jsonl"
    assert stats.schema == "dolly" and stats.rows_read == 15014
    assert stats.kept + stats.duplicates + stats.empty == 15014 and stats.kept > 14500
    assert len({i.uid for i in items}) == len(items)
    assert items[-1].source_row == 15014  # lines counted in the decompressed text


@requires_shared_data
def test_real_alpaca() -> None:
    items, stats = load_pool(ALPACA)
    assert stats.schema == "alpaca" and stats.rows_read == 52002 and stats.kept > 51000
