"""Choose and load an LLM backend: in-process vLLM, Hugging Face transformers, or ``auto``.

``auto`` takes vLLM when it can be imported (the fast path, CPU or GPU build) and transformers
otherwise, and logs which. Model locations are checked here, before any engine starts: a ``.gguf``
file (or a folder holding one) or a known model's name becomes its cached converted folder
(``models.resolve_model_path``); a local path must be a model folder (with ``config.json`` and
weights) and is loaded with the Hugging Face offline switches on, so it never touches the network;
a hub id is accepted only when the user gave one and did not ask for ``offline``.

``dtype="auto"`` on a CPU means float32 unless the CPU has native bf16 GEMMs
(``benchutil.resolve_dtype``): elsewhere bf16 runs an emulation path several times slower.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from selectllm_local.backends.base import Backend, BackendName, BackendOptions, Constraint
from selectllm_local.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "Backend",
    "BackendName",
    "BackendOptions",
    "Constraint",
    "LazyBackend",
    "load_backend",
    "resolve_backend_name",
    "resolve_dtype",
    "resolve_model",
]

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_backend_name(name: str) -> str:
    """Map ``auto`` to ``vllm`` or ``transformers`` depending on what is installed."""
    if name not in ("auto", "vllm", "transformers"):
        raise UserError(f"--backend {name!r} is not known. Use auto, vllm or transformers.")
    if name != "auto":
        return name
    if importlib.util.find_spec("vllm") is not None:
        log.info("backend auto: vLLM is installed, using the vllm backend")
        return "vllm"
    log.info("backend auto: vLLM is not installed, using the transformers backend")
    return "transformers"


def resolve_model(model_path: str, *, offline: bool = False) -> str:
    """Check a model location and set the offline switches for local folders.

    A ``.gguf`` file, a folder holding one, or a known model's name (``selectllm models``) is
    first replaced by its converted folder in the cache. Returns the path (absolute for local
    folders) or the hub id to load.
    """
    from selectllm_local.models import resolve_model_path

    model_path = resolve_model_path(model_path)
    path = Path(model_path).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise UserError(
                f"--model {model_path} is not a model folder: it has no config.json. Point "
                "--model at a folder saved by save_pretrained (config.json, weights, tokenizer) "
                "or at a .gguf file."
            )
        for var in OFFLINE_VARS:
            os.environ[var] = "1"
        return str(path.resolve())
    looks_local = model_path.startswith((".", "/", "~")) or "\\" in model_path
    if looks_local or not _HUB_ID.match(model_path):
        raise UserError(
            f"--model {model_path} does not exist. Give the folder of a local model (with "
            "config.json), a .gguf file, a known model's name (selectllm models), or a Hugging "
            "Face hub id such as Qwen/Qwen2.5-0.5B-Instruct."
        )
    if offline or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError(
            f"--model {model_path} is not a local folder, so it would be downloaded from the "
            "Hugging Face hub, but offline mode is on (--offline or HF_HUB_OFFLINE=1). Download "
            "the model first and pass its folder, or drop --offline."
        )
    log.warning(
        "--model %s is not a local folder: loading it from the Hugging Face hub", model_path
    )
    return model_path


def resolve_dtype(dtype: str, device: str | None = None) -> str:
    """``auto`` on a CPU -> float32 unless it has native bf16; on a GPU ``auto`` stays (engine's pick)."""
    if dtype != "auto":
        return dtype
    from selectllm_local.benchutil import default_device
    from selectllm_local.benchutil import resolve_dtype as hardware_dtype

    device = device or default_device()
    if device.startswith("cuda"):
        return dtype
    resolved = hardware_dtype(dtype, device)
    log.info("--dtype auto on this CPU: %s", resolved)
    return resolved


def load_backend(
    name: BackendName | str,
    model_path: str,
    options: BackendOptions | None = None,
    *,
    offline: bool = False,
) -> Backend:
    """Load ``name`` (auto | vllm | transformers) on ``model_path`` with ``options``."""
    options = options or BackendOptions()
    resolved = resolve_backend_name(name)
    model = resolve_model(model_path, offline=offline)
    options = replace(options, dtype=resolve_dtype(options.dtype, options.device))
    if resolved == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise UserError(
                "--backend vllm needs the vllm package, which is not installed. Install it "
                "(pip install 'selectllm-local[cpu]' or '[gpu]') or use --backend transformers."
            )
        from selectllm_local.backends.vllm_backend import VLLMBackend

        return VLLMBackend(model, options)
    from selectllm_local.backends.hf_backend import HFBackend

    return HFBackend(model, options)


class LazyBackend:
    """Loads the real backend on first use, so runs that need no LLM call never start one."""

    def __init__(self, loader: Callable[[], Backend]) -> None:
        self._loader = loader
        self._backend: Backend | None = None

    @property
    def loaded(self) -> Backend | None:
        return self._backend

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._backend is None:
            self._backend = self._loader()
        return getattr(self._backend, name)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
