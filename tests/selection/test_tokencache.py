"""The candidate token store: a second run on a pool reads its units instead of tokenizing, and
builds exactly the prompts a run without the store builds.

Real tokenizers (SmolLM2-135M-Instruct's and a BPE trained on Dolly with a Llama-3 template), two
pools (the example sample and Dolly 15k rows outside it), full and cut candidates; a damaged store
and another tokenizer must each be a miss, never a wrong prompt.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from selectllm_local.bench import run as bench
from selectllm_local.data import pool as data
from selectllm_local.models import random_weights as tinymodel
from selectllm_local.selection import prompts as prompting
from selectllm_local.selection import tokencache
from selectllm_local.selection.promptids import PromptBuilder
from tests.helpers import DOLLY, EXAMPLE_POOL
from tests.selection.test_promptids import LLAMA3_STYLE, _reference, _TokenizerBackend


@pytest.fixture(scope="module")
def pools() -> dict[str, list[Any]]:
    items, _ = data.load_pool(EXAMPLE_POOL)
    sample = {it.instruction for it in items}
    other, _ = data.load_pool(DOLLY)
    fresh = [it for it in other[9000:] if it.instruction not in sample][:360]
    return {
        "example": [dataclasses.replace(it, index=i) for i, it in enumerate(items[:360])],
        "dolly-9000": [dataclasses.replace(it, index=i) for i, it in enumerate(fresh)],
    }


@pytest.fixture(scope="module")
def tokenizers(
    pools: dict[str, list[Any]], smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Each loaded from its folder, as the backends load a model's tokenizer."""
    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp("tok")
    texts = [data.embedding_text(it) for it in pools["example"]]
    tinymodel.build_tokenizer(tmp / "pool", vocab_size=4000, texts=texts)
    dolly = AutoTokenizer.from_pretrained(tmp / "pool")
    dolly.chat_template = LLAMA3_STYLE
    smol = AutoTokenizer.from_pretrained(str(smollm2_dir), local_files_only=True)
    return {"smollm2": smol, "dolly-bpe": dolly}


def _builder(rows: list[Any], tok: Any, mode: str, root: Path | None) -> PromptBuilder:
    backend = _TokenizerBackend(tok)
    return PromptBuilder(
        prompting.PromptTemplate.load(), rows, backend, special_tokens=backend.special_tokens,
        count_tokens=backend.count_tokens, mode=mode, store_root=root,
    )  # fmt: skip


def _prompts(builder: PromptBuilder, plan: Any, budget: int, mode: str) -> list[Any]:
    builder.prepare([i for s in plan.subsets for i in s.candidates], budget)
    labels = prompting.LETTER_LABELS[:12] if mode == "logprobs" else None
    return [builder.build(s, labels, budget) for s in plan.subsets]


@pytest.mark.parametrize("pool", ["example", "dolly-9000"])
@pytest.mark.parametrize("budget", [256, 48])
def test_a_second_run_reads_every_unit_and_builds_the_same_prompts(
    pool: str, budget: int, pools: dict[str, list[Any]], tokenizers: dict[str, Any],
    tmp_path: Path,
) -> None:  # fmt: skip
    rows = pools[pool]
    plan = bench.strided_plan(30, 12, 1)
    distinct = len({i for s in plan.subsets for i in s.candidates})
    for name, tok in tokenizers.items():
        root = tmp_path / name
        cold = _builder(rows, tok, "ids", root)
        first = _prompts(cold, plan, budget, "ids")
        assert cold.store is not None and cold.store.hits == 0, name
        warm = _builder(rows, tok, "logprobs", root)  # another mode: the same units
        warm_ids = _builder(rows, tok, "ids", root)
        second = _prompts(warm_ids, plan, budget, "ids")
        lp = _prompts(warm, plan, budget, "logprobs")
        assert warm_ids.store is not None and warm_ids.store.hits == distinct, name
        assert warm_ids.store.misses == 0 and not warm_ids._raw_ids, name  # nothing tokenized
        cut = 0
        for s, a, b, c in zip(plan.subsets, first, second, lp, strict=True):
            want = _reference(cold.template, warm_ids.backend, s, rows, budget, None, "ids")
            assert str(a) == str(b) == str(want), (name, s.id)
            assert a.token_ids == b.token_ids == want.token_ids, (name, s.id)
            labels = prompting.LETTER_LABELS[:12]
            want_lp = _reference(cold.template, warm.backend, s, rows, budget, labels, "logprobs")
            assert c.token_ids == want_lp.token_ids, (name, s.id)
            cut += " [...]" in b
        if budget == 48:
            assert cut >= len(plan.subsets) // 2, name  # cut units came from the store too
        # every stored unit is the tokenizer's own ids of its (cut) text and the newline
        for (idx, b), (text, _cut, ids) in list(warm_ids._units.items())[:50]:
            assert b == budget
            assert ids == tok.encode(text + "\n", add_special_tokens=False), (name, idx)


def test_a_damaged_store_is_a_miss_and_is_written_again(
    pools: dict[str, list[Any]], tokenizers: dict[str, Any], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    rows, tok = pools["example"], tokenizers["smollm2"]
    plan = bench.strided_plan(10, 12, 1)
    first = _prompts(_builder(rows, tok, "ids", tmp_path), plan, 64, "ids")
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    index = folder / "b64.json"
    (npy,) = folder.glob("b64-*.npy")
    npy.write_bytes(npy.read_bytes()[:100])  # a torn array
    with caplog.at_level(logging.WARNING, logger="selectllm_local.selection.tokencache"):
        again = _builder(rows, tok, "ids", tmp_path)
        second = _prompts(again, plan, 64, "ids")
    assert "ignoring the candidate token store's b64 entry" in caplog.text
    assert again.store is not None and again.store.hits == 0
    assert [p.token_ids for p in first] == [p.token_ids for p in second]
    name = json.loads(index.read_text("utf-8"))["data"]
    assert name != npy.name and (folder / name).is_file() and not npy.exists()
    third = _builder(rows, tok, "ids", tmp_path)
    _prompts(third, plan, 64, "ids")
    assert third.store is not None and third.store.hits > 0 and third.store.misses == 0


def test_the_fingerprint_follows_the_tokenizer_and_the_defused_specials(
    tokenizers: dict[str, Any], smollm2_dir: Path
) -> None:
    from transformers import AutoTokenizer

    def fp(tok: Any, special: list[str]) -> str | None:
        return tokencache.fingerprint(tok, tok.backend_tokenizer, special, "\n")

    smol, dolly = tokenizers["smollm2"], tokenizers["dolly-bpe"]
    again = AutoTokenizer.from_pretrained(str(smollm2_dir), local_files_only=True)
    assert fp(smol, ["<|im_end|>"]) == fp(again, ["<|im_end|>"])  # the same content
    assert fp(smol, ["<|im_end|>"]) != fp(dolly, ["<|im_end|>"])
    assert fp(smol, ["<|im_end|>"]) != fp(smol, ["<|im_end|>", "<x>"])
    again.add_tokens(["zzqq"])  # changed in memory: the file alone would not tell
    assert fp(again, ["<|im_end|>"]) != fp(smol, ["<|im_end|>"])


def test_the_store_is_off_when_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(tokencache.ENV, "off")
    assert tokencache.default_root() is None
    monkeypatch.setenv(tokencache.ENV, str(tmp_path))
    assert tokencache.default_root() == tmp_path
    monkeypatch.delenv(tokencache.ENV)
    assert tokencache.default_root() == Path.home() / ".cache" / "selectllm-local" / "tokens"


def test_an_edit_to_the_cutting_code_makes_a_new_store(
    tokenizers: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Units stored by other cutting code are never read: the modules' source is fingerprinted."""
    tok = tokenizers["smollm2"]
    base = tokencache.fingerprint(tok, tok.backend_tokenizer, [], "\n")
    code = tmp_path / "selection"
    code.mkdir()
    for name in tokencache._CUTTING_CODE:
        (code / name).write_bytes((Path(tokencache.__file__).parent / name).read_bytes())
    monkeypatch.setattr(tokencache, "__file__", str(code / "tokencache.py"))
    assert tokencache.fingerprint(tok, tok.backend_tokenizer, [], "\n") == base
    with open(code / "prompts.py", "a", encoding="utf-8") as fh:
        fh.write("\n# a changed cut\n")
    assert tokencache.fingerprint(tok, tok.backend_tokenizer, [], "\n") != base


# -- a cache, never an error: damage, denied access, stale units, concurrent writers ------------
PLAN, BUDGET = bench.strided_plan(10, 12, 1), 64


def _fill(rows: list[Any], tok: Any, root: Path) -> tuple[list[Any], Path]:
    """The prompts of a first run, which fills the store under ``root``, and its folder."""
    first = _prompts(_builder(rows, tok, "ids", root), PLAN, BUDGET, "ids")
    (folder,) = [p for p in root.iterdir() if p.is_dir()]
    return first, folder


def _index(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / f"b{BUDGET}.json").read_text("utf-8")))


@pytest.mark.parametrize("name", [5, "../victim.npy", "b64.json", "x.npz"])
def test_an_index_naming_no_array_of_the_store_is_a_miss_and_deletes_nothing(
    name: Any, pools: dict[str, list[Any]], tokenizers: dict[str, Any], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    import numpy as np

    rows, tok = pools["example"], tokenizers["smollm2"]
    root = tmp_path / "store"
    first, folder = _fill(rows, tok, root)
    meta = _index(folder)
    victim = root / "victim.npy"  # outside the store's folder, a real array
    np.save(victim, np.load(folder / meta["data"]))
    np.savez(folder / "x.npz", a=np.zeros(3, dtype=np.int32))
    (folder / f"b{BUDGET}.json").write_text(json.dumps({**meta, "data": name}), "utf-8")
    with caplog.at_level(logging.WARNING, logger="selectllm_local.selection.tokencache"):
        again = _builder(rows, tok, "ids", root)
        second = _prompts(again, PLAN, BUDGET, "ids")
    assert again.store is not None and again.store.hits == 0
    assert [p.token_ids for p in first] == [p.token_ids for p in second]
    assert victim.is_file() and (folder / "x.npz").is_file()
    assert "ignoring the candidate token store" in caplog.text
    written = _index(folder)["data"]  # written again, under a name of its own
    assert tokencache.data_name(BUDGET, written) and (folder / written).is_file()
    third = _builder(rows, tok, "ids", root)
    _prompts(third, PLAN, BUDGET, "ids")
    assert third.store is not None and third.store.hits > 0 and third.store.misses == 0


def test_a_store_the_user_cannot_read_or_write_is_a_miss(
    pools: dict[str, list[Any]], tokenizers: dict[str, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """EACCES on every file of the store (a folder made by another user): the run builds the
    same prompts from the tokenizer and logs it once."""
    import builtins
    import errno
    import os

    rows, tok = pools["example"], tokenizers["dolly-bpe"]
    root = tmp_path / "store"
    first, _folder = _fill(rows, tok, root)

    def denied(real: Any) -> Any:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            if str(path).startswith(str(root)):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path, *args, **kwargs)

        return call

    for mod, name in [(os, "stat"), (os, "open"), (os, "mkdir"), (builtins, "open")]:
        monkeypatch.setattr(mod, name, denied(getattr(mod, name)))
    with caplog.at_level(logging.WARNING, logger="selectllm_local.selection.tokencache"):
        again = _builder(rows, tok, "ids", root)
        second = _prompts(again, PLAN, BUDGET, "ids")
        _prompts(again, PLAN, BUDGET // 2, "ids")  # another budget: no second warning
    assert [p.token_ids for p in first] == [p.token_ids for p in second]
    assert again.store is not None and again.store.hits == 0 and again.store.writes == 0
    assert caplog.text.count("ignoring the candidate token store") == 1
    assert caplog.text.count("cannot write the candidate token store") == 1


def _swap_first_unit(folder: Path, digest: bool) -> None:
    """Swap two ids of the first stored unit (a stale store); ``digest``: and record the
    array's new checksum, as a store written by other code would."""
    import hashlib

    import numpy as np

    meta = _index(folder)
    arr = np.load(folder / meta["data"])
    off = int(arr[0])
    arr[off], arr[off + 1] = arr[off + 1], arr[off]
    assert arr[off] != arr[off + 1]
    np.save(folder / meta["data"], arr)
    if digest:
        meta["blake2b"] = hashlib.blake2b(arr.tobytes(), digest_size=16).hexdigest()
        (folder / f"b{BUDGET}.json").write_text(json.dumps(meta), "utf-8")


@pytest.mark.parametrize("caught_by", ["stored-unit check", "whole-prompt check", "checksum"])
def test_a_stored_unit_that_differs_from_the_tokenizer_never_reaches_a_prompt(
    caught_by: str, pools: dict[str, list[Any]], tokenizers: dict[str, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    from selectllm_local.selection import storedunits

    rows, tok = pools["dolly-9000"], tokenizers["smollm2"]
    first, folder = _fill(rows, tok, tmp_path)
    _swap_first_unit(folder, digest=caught_by != "checksum")
    if caught_by == "whole-prompt check":  # no stored unit checked: the prompt check must see it
        monkeypatch.setattr(storedunits, "STORE_CHECKS", 0)
    with caplog.at_level(logging.WARNING, logger="selectllm_local.selection.tokencache"):
        again = _builder(rows, tok, "ids", tmp_path)
        again.prepare([i for s in PLAN.subsets for i in s.candidates], BUDGET)
        if caught_by == "stored-unit check":  # before any prompt is built
            assert again.store is None and not (folder / f"b{BUDGET}.json").exists()
            assert "gave wrong units" in caplog.text
        second = [again.build(s, None, BUDGET) for s in PLAN.subsets]
    if caught_by == "checksum":
        assert again.store is not None and again.store.hits == 0
    else:  # the entry is deleted and the run wrote nothing more
        assert again.store is None and not list(folder.glob(f"b{BUDGET}*"))
        assert "gave wrong units" in caplog.text
    assert [p.token_ids for p in first[1:]] == [p.token_ids for p in second[1:]]
    if caught_by != "whole-prompt check":  # the first prompt is the one the check rebuilt
        assert first[0].token_ids == second[0].token_ids


def test_two_runs_writing_one_store_at_once_keep_every_unit(
    pools: dict[str, list[Any]], tokenizers: dict[str, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """B writes while A is between reading the index and writing its own: A merges B's units."""
    rows, tok = pools["example"], tokenizers["smollm2"]
    made = _builder(rows, tok, "ids", None)
    idx = [i for s in PLAN.subsets for i in s.candidates]
    made.prepare(idx, BUDGET)
    mark = len(prompting.TRUNCATION_MARK)
    units = {
        made._key(i): (len(t) - mark if cut else -1, ids)
        for i in idx
        for t, cut, ids in [made._units[(i, BUDGET)]]
    }
    keys = list(units)
    half_a = {k: units[k] for k in keys[: len(keys) // 2]}
    half_b = {k: units[k] for k in keys[len(keys) // 2 :]}
    a, b = tokencache.UnitStore(tmp_path), tokencache.UnitStore(tmp_path)
    assert a.get(BUDGET, keys[0]) is None and b.get(BUDGET, keys[0]) is None  # both read
    real = tokencache.save_npy
    calls = []

    def save(path: Path, arr: Any) -> None:
        calls.append(path)
        if len(calls) == 1:  # A's first array: B writes its units right now
            b.put(BUDGET, half_b)
        real(path, arr)

    monkeypatch.setattr(tokencache, "save_npy", save)
    a.put(BUDGET, half_a)
    fresh = tokencache.UnitStore(tmp_path)
    assert {k: fresh.get(BUDGET, k) for k in keys} == {k: (c, i) for k, (c, i) in units.items()}
    assert [p.name for p in tmp_path.glob("*.npy")] == [_index(tmp_path)["data"]]  # no orphan


def test_units_are_written_once_per_round_and_a_failed_write_leaves_no_array(
    pools: dict[str, list[Any]], tokenizers: dict[str, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    rows, tok = pools["example"], tokenizers["dolly-bpe"]
    builder = _builder(rows, tok, "ids", tmp_path / "ok")
    builder.prepare([i for s in PLAN.subsets for i in s.candidates], BUDGET)
    assert builder.store is not None and builder.store.writes == 1
    for s in PLAN.subsets:  # prompts cut further to fit, as ``rounds`` does
        builder.build(s, None, BUDGET // 2)
        builder.build(s, None, BUDGET // 4)
    assert builder.store.writes == 1  # kept in memory until the round ends
    builder.flush_store()
    assert builder.store.writes == 3  # one array per budget
    later = _builder(rows, tok, "ids", tmp_path / "ok")
    later.prepare([i for s in PLAN.subsets for i in s.candidates], BUDGET // 4)
    assert later.store is not None and later.store.misses == 0 and later.store.hits > 0

    def broken(path: Path) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tokencache, "atomic_path", broken)
    failing = _builder(rows, tok, "ids", tmp_path / "full")
    failing.prepare(PLAN.subsets[0].candidates, BUDGET)
    (folder,) = (tmp_path / "full").iterdir()
    # the array written before the index is gone (the tokenizer's whole-token table stays)
    assert [p.name for p in folder.iterdir() if not p.name.startswith("whole-")] == []
    calls = []
    monkeypatch.setattr(tokencache, "save_npy", lambda *a: calls.append(a))
    failing.prepare(PLAN.subsets[1].candidates, BUDGET)
    assert calls == []  # no write after a failed one


def test_fingerprint_folders_unused_for_30_days_are_removed(
    tokenizers: dict[str, Any], tmp_path: Path
) -> None:
    import os
    import time

    tok = tokenizers["smollm2"]
    old = time.time() - 31 * 86400
    folders = {n: tmp_path / (c * 32) for n, c in [("old", "a"), ("recent", "b"), ("mixed", "c")]}
    for folder in folders.values():
        folder.mkdir()
        (folder / "b64.json").write_text("{}", "utf-8")
        (folder / "b64-0123456789ab.npy").write_bytes(b"x")
        (folder / "whole-0123456789ab.npy").write_bytes(b"x")  # the tokenizer's table
    (folders["mixed"] / "notes.txt").write_text("the user's", "utf-8")
    (tmp_path / ("d" * 31)).mkdir()  # not a fingerprint
    for name in ("old", "mixed"):
        os.utime(folders[name], (old, old))
    os.utime(tmp_path / ("d" * 31), (old, old))
    store = tokencache.open_store(tok, tok.backend_tokenizer, [], "\n", tmp_path)
    assert store is not None
    assert not folders["old"].exists() and folders["recent"].is_dir()
    assert [p.name for p in folders["mixed"].iterdir()] == ["notes.txt"]
    assert (tmp_path / ("d" * 31)).is_dir()


def test_the_fingerprint_follows_the_tokenizer_libraries_and_compiled_code(
    tokenizers: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An install without sources fingerprints the compiled modules; a library upgrade is a new
    store."""
    import py_compile

    import tokenizers as tokenizers_lib

    tok = tokenizers["smollm2"]
    base = tokencache.fingerprint(tok, tok.backend_tokenizer, [], "\n")
    monkeypatch.setattr(tokenizers_lib, "__version__", "0.0.1")
    assert tokencache.fingerprint(tok, tok.backend_tokenizer, [], "\n") not in (base, None)
    monkeypatch.undo()
    code = tmp_path / "selection"
    code.mkdir()
    for name in tokencache._CUTTING_CODE:
        source = Path(tokencache.__file__).parent / name
        py_compile.compile(str(source), str((code / name).with_suffix(".pyc")), doraise=True)
    monkeypatch.setattr(tokencache, "__file__", str(code / "tokencache.pyc"))
    compiled = tokencache.fingerprint(tok, tok.backend_tokenizer, [], "\n")
    assert compiled is not None
    with open(code / "prompts.pyc", "ab") as fh:
        fh.write(b"\0")
    assert tokencache.fingerprint(tok, tok.backend_tokenizer, [], "\n") not in (compiled, None)


@pytest.mark.parametrize("setting", ["off", "on"])
def test_a_select_with_the_store_off_opens_and_writes_no_store(
    setting: str, hf_backend: Any, pools: dict[str, list[Any]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from selectllm_local.cluster import subsets
    from selectllm_local.config import SelectorConfig
    from selectllm_local.selection.rounds import select

    opened: list[tokencache.UnitStore] = []

    class Spy(tokencache.UnitStore):
        def __init__(self, folder: Path) -> None:
            super().__init__(folder)
            opened.append(self)

    monkeypatch.setattr(tokencache, "UnitStore", Spy)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(tokencache.ENV, "off" if setting == "off" else str(tmp_path / "store"))
    items = pools["example"][:40]
    plan = subsets.make_plan([i % 12 for i in range(40)], 7, seed=0)
    out = select(plan, items, hf_backend, cfg=SelectorConfig(), progress=False)
    assert len(set(out.selected)) == 7
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    if setting == "off":
        assert opened == [] and written == []
    else:
        assert len(opened) == 1 and opened[0].writes >= 1
        assert any(p.suffix == ".npy" for p in written)
