"""The backend registry: every name ``--backend`` accepts, its loader, the one ``auto`` policy,
and where a model comes from (a local folder, a packaged or converted model, a hub id).

Apart from ``backends/__init__`` (which adds serving on Ray) so that a Ray actor loads its engine
through the same registry without importing the Ray driver side.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import cast

from selectllm_local.backends.base import Backend
from selectllm_local.backends.startup import explain_startup_errors
from selectllm_local.config import EngineConfig
from selectllm_local.config.base import BACKEND_NAMES, BackendName
from selectllm_local.errors import UserError, install_hint

log = logging.getLogger(__name__)

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_WARNED: set[str] = set()


EXTRAS = {
    "vllm": ("vllm", "--backend vllm needs the vllm package, which is not installed. Install it "
             f"({install_hint('vllm')}) or use --backend transformers."),
    "transformers": ("transformers", "--backend transformers needs the transformers package, "
                     f"which is not installed. Install it ({install_hint('transformers')})."),
}  # fmt: skip


def check_backend_installed(name: str) -> None:
    """A ``UserError`` saying what to install when backend ``name``'s package is missing."""
    module, message = EXTRAS.get(name, ("", ""))
    if module and importlib.util.find_spec(module) is None:
        raise UserError(message)


def _load_vllm(model: str, options: EngineConfig) -> Backend:
    check_backend_installed("vllm")
    from selectllm_local.backends.vllm_backend import VLLMBackend

    return VLLMBackend(model, options)


def _load_transformers(model: str, options: EngineConfig) -> Backend:
    from selectllm_local.backends.hf_backend import HFBackend

    return HFBackend(model, options)


def _load_fake(model: str, options: EngineConfig) -> Backend:
    from selectllm_local.backends.fake import FakeBackend

    return FakeBackend.from_options(options)


LOADERS: Mapping[str, Callable[[str, EngineConfig], Backend]] = {
    "vllm": _load_vllm,
    "transformers": _load_transformers,
    "fake": _load_fake,
}


def resolve_backend_name(name: str, *, lora: bool = False) -> BackendName:
    """The one ``auto`` policy (module docstring); other names are checked and returned."""
    if name not in BACKEND_NAMES:
        raise UserError(
            f"--backend {name!r} is not known. Use {', '.join(BACKEND_NAMES[:-1])} "
            f"or {BACKEND_NAMES[-1]}."
        )
    if name != "auto":
        return cast(BackendName, name)
    from selectllm_local import hardware

    if importlib.util.find_spec("vllm") is None:
        log.info("backend auto: vLLM is not installed, using the transformers backend")
        return "transformers"
    if lora and not hardware.cuda_available():
        log.info("backend auto: a LoRA adapter without a GPU, using the transformers backend")
        return "transformers"
    log.info("backend auto: vLLM is installed, using the vllm backend")
    return "vllm"


def resolve_model(model_path: str, *, offline: bool = False) -> str:
    """Check a model location and set the offline switches for local folders.

    A ``.gguf`` file, a folder holding one, or a known model's name (``selectllm models``) is
    first replaced by its converted folder in the cache. Returns the path (absolute for local
    folders) or the hub id to load.
    """
    from selectllm_local.models.registry import resolve_model_path

    model_path = resolve_model_path(model_path, offline=offline)
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
    if model_path not in _HUB_WARNED:  # once per process (checked before the run, loaded after)
        _HUB_WARNED.add(model_path)
        log.warning(
            "--model %s is not a local folder: loading it from the Hugging Face hub", model_path
        )
    return model_path


def load_local(resolved: str, model: str, options: EngineConfig) -> Backend:
    """Start backend ``resolved`` (a name ``resolve_backend_name`` returned) in this process."""
    if resolved != "fake":
        from selectllm_local import hardware

        options = replace(options, dtype=hardware.engine_dtype(options.dtype, options.device))
    if options.batch_invariant and resolved != "fake":  # before the engine starts
        from selectllm_local.backends import invariance

        invariance.enable(resolved)
    with explain_startup_errors(resolved):
        return LOADERS[resolved](model, options)
