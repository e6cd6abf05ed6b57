"""Choose and load an LLM backend: one registry of names, one ``auto`` policy, for every caller.

Why one place: selection, evaluation and the benchmark all generate text; each used to choose and
start its engine its own way, and ``auto`` meant one thing for ``select`` and another for
``evaluate``. Now ``LOADERS`` maps each name to its loader and ``resolve_backend_name`` is the only
``auto`` policy: vLLM when it can be imported (the fast path, CPU or GPU build), except that a LoRA
adapter is served by vLLM only on a GPU (the CPU build is not tested with adapters), else
transformers; it logs which. With ``options.ray`` set, the chosen backend is served by Ray
actors (``ray_backend.RayBackend``, same protocol). ``fake`` is the scripted backend of ``backends/fake.py``, selectable by
name so tests of pure logic (retries, Ctrl-C) can run the whole CLI without a model.

Engine start-up failures that have a known cause outside our code (see ``startup.py``) become one
``UserError`` naming the cause and the fix. Model locations are checked here, before any engine starts: a ``.gguf`` file (or a folder holding
one) or a known model's name becomes its cached converted folder (``models.resolve_model_path``); a
local path must be a model folder (with ``config.json`` and weights) and is loaded with the Hugging
Face offline switches on, so it never touches the network; a hub id is accepted only when the user
gave one and did not ask for ``offline``.

``dtype="auto"`` on a CPU means float32 unless the CPU has native bf16 GEMMs
(``hardware.engine_dtype``): elsewhere bf16 runs an emulation path several times slower.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from selectllm_local.backends.base import Backend, Constraint
from selectllm_local.backends.registry import (
    BACKEND_NAMES,
    LOADERS,
    check_backend_installed,
    load_local,
    resolve_backend_name,
    resolve_model,
)
from selectllm_local.backends.startup import explain_startup_errors
from selectllm_local.config import EngineConfig
from selectllm_local.config.base import BackendName
from selectllm_local.records import Generation
from selectllm_local.summaries import RaySummary

log = logging.getLogger(__name__)

__all__ = [
    "BACKEND_NAMES",
    "LOADERS",
    "Backend",
    "BackendName",
    "Constraint",
    "LazyBackend",
    "check_backend_installed",
    "load_backend",
    "resolve_backend_name",
    "resolve_model",
]


def load_backend(
    name: BackendName | str,
    model_path: str,
    options: EngineConfig | None = None,
    *,
    offline: bool = False,
) -> Backend:
    """Load ``name`` (see ``BACKEND_NAMES``) on ``model_path`` with ``options``."""
    options = options or EngineConfig()
    resolved = resolve_backend_name(name, lora=bool(options.lora_path))
    model = model_path if resolved == "fake" else resolve_model(model_path, offline=offline)
    if options.ray:  # the same backend, served by Ray actors (each resolves dtype on its node)
        from selectllm_local.backends.ray_backend import RayBackend

        with explain_startup_errors(resolved):
            return RayBackend(resolved, model_path, model, options, offline=offline)
    return load_local(resolved, model, options)


class LazyBackend:
    """A ``Backend`` that loads the real one on first use, so runs that need no LLM call never
    start an engine. ``stats`` reads as empty (nothing counted) until then."""

    def __init__(self, loader: Callable[[], Backend]) -> None:
        self._loader = loader
        self._backend: Backend | None = None

    @property
    def loaded(self) -> Backend | None:
        return self._backend

    @property
    def _real(self) -> Backend:
        if self._backend is None:
            self._backend = self._loader()
        return self._backend

    @property
    def name(self) -> str:
        return self._real.name

    @property
    def model_path(self) -> str:
        return self._real.model_path

    @property
    def options(self) -> EngineConfig:
        return self._real.options

    @property
    def stats(self) -> dict[str, float]:
        return self._backend.stats if self._backend is not None else {}

    @property
    def tokenizer(self) -> Any:
        return self._real.tokenizer

    @property
    def special_tokens(self) -> list[str]:
        return self._real.special_tokens

    @property
    def max_context(self) -> int:
        return self._real.max_context

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return self._real.render_chat(messages)

    def count_tokens(self, text: str) -> int:
        return self._real.count_tokens(text)

    def fit_prompt(self, text: str, max_tokens: int) -> str:
        return self._real.fit_prompt(text, max_tokens)

    def generate(self, prompts: list[str], **kwargs: Any) -> list[Generation]:
        return self._real.generate(prompts, **kwargs)

    def score_labels(
        self, prompts: list[str], labels: list[list[str]], **kwargs: Any
    ) -> list[list[float]]:
        return self._real.score_labels(prompts, labels, **kwargs)

    def token_logprobs(
        self, sequences: list[list[int]], starts: list[int], *, progress: bool = False
    ) -> list[list[float]]:
        return self._real.token_logprobs(sequences, starts, progress=progress)

    def ray_summary(self) -> RaySummary | None:
        return self._backend.ray_summary() if self._backend is not None else None

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
