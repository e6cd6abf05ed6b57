"""A quiet quick start: the engine's start-up output goes to the run's engine.log, ``-v`` shows it.

The same path as the quick start (``python -m selectllm_local select POOL --budget B --model M``)
on the real vLLM engine, smaller: the tiny random-weight model and a 60-row pool, eager, so the
two engine starts stay short. Each run is a subprocess whose stderr is what a user's terminal
shows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from selectllm_local.backends import startup
from tests.helpers import HANG_GUARD, requires_vllm, small_pool

CLI = [sys.executable, "-m", "selectllm_local"]
# A line of vLLM's logger: "(EngineCore pid=12) WARNING 12-06 11:07:01 [file.py:12] ..."
VLLM_LINE = re.compile(r"pid=\d+\) (DEBUG|INFO|WARNING|ERROR) \d\d-\d\d \d\d:\d\d:\d\d \[")
PY_WARNING = re.compile(r"\b[A-Z]\w*Warning: ")


def _select(tmp_path: Path, model: Path, run: str, *, verbose: bool) -> subprocess.CompletedProcess:
    pool = small_pool(tmp_path, 60)
    args = [str(pool), "--model", str(model), "--budget", "6", "--k", "6", "--backend", "vllm",
            "--max-model-len", "4096", "--enforce-eager", "--run-dir", str(tmp_path / run)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "VLLM_LOGGING_LEVEL"}
    cmd = [*CLI, *(["-v"] if verbose else []), "select", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=HANG_GUARD)


@requires_vllm
@pytest.mark.slow
def test_select_shows_no_engine_output_by_default_and_verbose_shows_it(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    quiet = _select(tmp_path, tiny_model_dir, "quiet", verbose=False)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert not VLLM_LINE.search(quiet.stderr), quiet.stderr[-3000:]
    assert not PY_WARNING.search(quiet.stderr), quiet.stderr[-3000:]
    # an engine's own loggers (vLLM's Triton check) pass records up to our console handler
    assert not re.search(r"^WARNING", quiet.stderr, re.M), quiet.stderr[-3000:]
    # transformers' weight-loading bar (the embedder's load) is not drawn either
    assert "Loading weights" not in quiet.stderr, quiet.stderr[-3000:]
    assert "starting the vLLM engine" in quiet.stderr  # our own lines still show
    assert "vLLM engine ready" in quiet.stderr
    # what was hidden is kept in the run directory
    assert VLLM_LINE.search((tmp_path / "quiet" / startup.ENGINE_LOG).read_text("utf-8"))

    loud = _select(tmp_path, tiny_model_dir, "loud", verbose=True)
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert VLLM_LINE.search(loud.stderr), loud.stderr[-3000:]
    assert not (tmp_path / "loud" / startup.ENGINE_LOG).exists()


def test_a_failed_start_shows_the_tail_of_its_output(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "run" / startup.ENGINE_LOG
    with (
        caplog.at_level("INFO", logger="selectllm_local"),
        startup.engine_log(log),
        pytest.raises(RuntimeError, match="no engine"),
        startup.captured_output("vLLM"),
    ):
        # written at the file-descriptor level, as a C library would
        os.write(2, b"line one of the engine\nthe cause, last\n")
        raise RuntimeError("no engine")
    assert log.read_text("utf-8").endswith("the cause, last\n")
    failure = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(failure) == 1 and str(log) in failure[0] and "the cause, last" in failure[0]


def test_a_good_start_leaves_no_temporary_log_and_restores_stderr(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with startup.captured_output("vLLM") as path:
        os.write(2, b"hidden engine chatter\n")
    assert path is not None and not path.exists()
    os.write(2, b"shown after\n")
    err = capfd.readouterr().err
    assert "hidden engine chatter" not in err and "shown after" in err


def test_other_libraries_log_records_go_to_the_engine_log_while_it_starts(
    tmp_path: Path,
) -> None:
    """Records of vLLM's or Triton's loggers that reach the root logger's handler (the console
    in the CLI) go to the engine log during a start; the package's own records still show."""
    import io
    import logging

    shown = io.StringIO()
    handler = logging.StreamHandler(shown)
    root, ours = logging.getLogger(), logging.getLogger("selectllm_local")
    root.addHandler(handler)
    levels = root.level, ours.level
    root.setLevel(logging.INFO)
    ours.setLevel(
        logging.INFO
    )  # not verbose (-v would show the engine's output), whatever ran before
    # a library logger that passes its records up (vLLM's own may not, once vLLM configured it)
    other = logging.getLogger("an_engine_library.triton_check")
    log = tmp_path / startup.ENGINE_LOG
    try:
        with startup.engine_log(log), startup.captured_output("vLLM"):
            other.warning("Triton is installed, but")
            logging.getLogger("selectllm_local.backends").info("our own line")
        other.warning("after the start")
    finally:
        root.removeHandler(handler)
        root.setLevel(levels[0])
        ours.setLevel(levels[1])
    assert "Triton" not in shown.getvalue() and "our own line" in shown.getvalue()
    assert "after the start" in shown.getvalue()  # only during a start
    assert "WARNING an_engine_library.triton_check: Triton is installed, but" in log.read_text()
    assert not handler.filters


def test_weight_loading_bar_is_off_for_a_local_model_only_and_comes_back(
    tiny_model_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import logging

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from selectllm_local.progress import quiet_weight_bars

    ours = logging.getLogger("selectllm_local")
    level, bars = ours.level, hf_logging.is_progress_bar_enabled()
    ours.setLevel(logging.INFO)  # not -v, whatever ran before
    hf_logging.enable_progress_bar()
    try:
        capfd.readouterr()
        with quiet_weight_bars(tiny_model_dir):
            AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        assert "Loading weights" not in capfd.readouterr().err
        assert hf_logging.is_progress_bar_enabled()  # restored after the load
        AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # outside: transformers draws it
        assert "Loading weights" in capfd.readouterr().err
        with quiet_weight_bars("someone/a-hub-model"):  # may download: every bar stays
            assert hf_logging.is_progress_bar_enabled()
        ours.setLevel(logging.DEBUG)  # -v keeps it
        with quiet_weight_bars(tiny_model_dir):
            assert hf_logging.is_progress_bar_enabled()
    finally:
        ours.setLevel(level)
        (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()


def test_random_model_prints_its_own_lines_only(tmp_path: Path) -> None:
    out = tmp_path / "model"
    r = subprocess.run([*CLI, "random-model", "tiny-qwen2", str(out)], capture_output=True,
                       text=True, timeout=HANG_GUARD)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "model.safetensors").is_file()
    assert "Writing model shards" not in r.stderr and "deprecated" not in r.stderr, r.stderr
    assert not PY_WARNING.search(r.stderr), r.stderr
    assert "wrote random-weight tiny-qwen2 model" in r.stderr


def test_engine_runs_eager_on_cpu_and_compiled_on_cuda_unless_told() -> None:
    assert startup.eager(None, cuda=False) is True
    assert startup.eager(None, cuda=True) is False
    assert startup.eager(False, cuda=False) is False
    assert startup.eager(True, cuda=True) is True
