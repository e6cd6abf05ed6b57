"""What the tests share besides fixtures: repository paths, small builders, optional-part markers.

Test modules import from here (``from tests.helpers import EXAMPLE_POOL``); ``conftest.py`` holds
only fixtures. Importing this module also sets the environment every test run needs (offline,
one vLLM process, a small KV cache, a candidate token store of its own): ``conftest.py`` imports it first, before anything can import
vLLM or transformers.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

# Set before anything imports vllm / transformers.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default takes ~8 GiB per engine
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (the README's two workers on two cores), one OpenMP thread per process and
# its subprocesses: two threads per worker oversubscribed the cores, and OpenMP's spinning
# threads cost CPU. Measured on three heavy test files (two runs in each order): 4 min 24 s and
# 7.6 CPU-min against 5 min 31 s and 10.2 CPU-min. A value already set wins.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# the candidate token store (selection/tokencache.py): one per test run, not the user's cache
_TOKEN_STORE = tempfile.mkdtemp(prefix="selectllm-test-tokens-")
os.environ.setdefault("SELECTLLM_TOKEN_CACHE", _TOKEN_STORE)
atexit.register(shutil.rmtree, _TOKEN_STORE, True)

REPO = Path(__file__).resolve().parents[1]
HANG_GUARD = 1800  # seconds: the limit on waiting for a subprocess; a guard against a hang only,
# far beyond any run's length on a loaded 2-core machine, so no outcome depends on speed
# Dolly 15k ships with the repository (data/dolly, gzip): tests that need it always run, and fail if
# it is missing. Alpaca 52k does not ship; the few tests that read it look in a sibling data folder.
DOLLY = REPO / "data" / "dolly" / "databricks-dolly-15k.jsonl.gz"
DOLLY_TESTSET = REPO / "examples" / "testsets" / "dolly"
SHARED_DATA = REPO.parent / "shared" / "data"
ALPACA = SHARED_DATA / "alpaca_original" / "alpaca_data.json"
EXAMPLE_POOL = REPO / "examples" / "dolly_sample_1500.jsonl"
TINY_CI = REPO / "configs" / "tiny_ci.toml"
GOLDEN_DIR = REPO / "tests" / "golden"  # recorded outputs the golden tests compare against


def small_pool(tmp_path: Path, rows: int) -> Path:
    """The first ``rows`` lines of the example pool, as a pool file in ``tmp_path``."""
    lines = EXAMPLE_POOL.read_text("utf-8").splitlines()[:rows]
    path = tmp_path / f"pool{rows}.jsonl"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def n_lines(path: Path) -> int:
    """Complete lines of a JSONL file (a torn last line does not count); 0 if it is absent."""
    if not path.exists():
        return 0
    return sum(
        1 for line in path.read_text("utf-8").splitlines(keepends=True) if line.endswith("\n")
    )


def tiny_experiment_config(tmp_path: Path, *replace: tuple[str, str], name: str = "c.toml") -> Path:
    """``configs/tiny_ci.toml`` with absolute example paths and each (old, new) replaced."""
    text = TINY_CI.read_text().replace('"../examples', f'"{REPO}/examples')
    for old, new in replace:
        assert old in text, old
        text = text.replace(old, new)
    p = tmp_path / name
    p.write_text(text)
    return p


HAS_VLLM = importlib.util.find_spec("vllm") is not None
HAS_RAY = importlib.util.find_spec("ray") is not None
# CI (.ci/run) installs every Python extra the tests use and sets SELECTLLM_TEST_STRICT=1: there a
# missing vLLM, Ray or scipy is a failure, not a skip, so a broken install cannot pass as green.
STRICT = os.environ.get("SELECTLLM_TEST_STRICT") == "1"
VLLM_MISSING = "vLLM is not installed (pip install -e '.[cpu]')"
RAY_MISSING = "ray is not installed (pip install -e '.[cpu,ray,dev]')"


def missing(reason: str) -> None:
    """Skip a test whose optional component is absent, or fail it under SELECTLLM_TEST_STRICT."""
    if STRICT:
        pytest.fail(f"{reason}; SELECTLLM_TEST_STRICT=1 requires it", pytrace=False)
    pytest.skip(reason)


def needs(present: bool, reason: str) -> pytest.MarkDecorator:
    """``skipif`` for an optional component, except under SELECTLLM_TEST_STRICT: the test then runs
    and fails where the component is used."""
    return pytest.mark.skipif(not present and not STRICT, reason=reason)


def _has_cuda() -> bool:
    from selectllm_local.hardware import cuda_available

    return cuda_available()


requires_vllm = needs(HAS_VLLM, VLLM_MISSING)
requires_gpu = pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA GPU; none is visible")
# Alpaca 52k only (not shipped); Dolly needs no marker.
requires_shared_data = pytest.mark.skipif(
    not ALPACA.exists(), reason=f"Alpaca 52k not found at {ALPACA} (it does not ship)"
)


def toml_text(table: dict[str, Any]) -> str:
    """``table`` as TOML (the subset experiment files use: strings, numbers, booleans, lists of
    them, nested tables); ``tomllib.loads(toml_text(t)) == t``. No TOML writer is a dependency."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)  # a JSON string is a TOML basic string (\\uXXXX escapes too)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"no TOML form for {v!r}")

    lines: list[str] = []

    def emit(name: list[str], t: dict[str, Any]) -> None:
        if name:
            lines.extend(["", "[" + ".".join(json.dumps(n) for n in name) + "]"])
        subtables = {k: v for k, v in t.items() if isinstance(v, dict)}
        lines.extend(f"{json.dumps(k)} = {value(v)}" for k, v in t.items() if k not in subtables)
        for k, v in subtables.items():
            emit([*name, k], v)

    emit([], table)
    return "\n".join(lines).lstrip("\n") + "\n"
