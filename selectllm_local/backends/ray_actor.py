"""The Ray actor that serves one shard of prompts at a time with one of our backends.

Each actor loads its backend with ``load_backend`` on its own node (so ``dtype=auto`` and the
model location are resolved where the model runs) and answers whole shards: the driver
(``ray_backend.RayBackend``) keeps every result and writes ``responses.jsonl``, so an actor holds
nothing that a restart could lose. A load failure is kept and raised by ``info``, so the driver can
report the user's error (a missing model on a worker) instead of a dead actor.

Test hook: ``SELECTLLM_RAY_DIE_AFTER=N`` makes actor 0, in its first life only, exit abruptly
(``os._exit``) when a shard arrives after it has served ``N`` prompts; the driver must then re-queue
that shard and the actor's other in-flight shards on the restarted actor or another one.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

from selectllm_local.backends.base import Backend, TokenizedPrompt
from selectllm_local.config import EngineConfig
from selectllm_local.records import Generation

DIE_AFTER_ENV = "SELECTLLM_RAY_DIE_AFTER"
# What a shard carries per prompt: its text and, when the driver built them, its token ids.
WirePrompt = tuple[str, "list[int] | None"]
COUNTED = ("prompt_tokens", "output_tokens", "cached_prompt_tokens", "padding_tokens")


def _restarted() -> bool:
    import ray

    with warnings.catch_warnings():  # the property warns about an unrelated deprecated name
        warnings.simplefilter("ignore")
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


class ShardServer:
    """One backend in one actor; ``generate``/``score_labels`` serve a shard, return stats."""

    def __init__(
        self, index: int, backend: str, model: str, options: EngineConfig, offline: bool
    ) -> None:
        from selectllm_local.backends.registry import (
            load_local,
            resolve_backend_name,
            resolve_model,
        )

        self.index, self.served = index, 0
        self.restarted = _restarted()
        die = os.environ.get(DIE_AFTER_ENV)
        self.die_after = int(die) if die and index == 0 and not self.restarted else None
        self.error: Exception | None = None
        self._backend: Backend | None = None
        try:
            resolved = resolve_backend_name(backend, lora=bool(options.lora_path))
            path = model if resolved == "fake" else resolve_model(model, offline=offline)
            self._backend = load_local(resolved, path, options)
        except Exception as exc:  # noqa: BLE001 - raised to the driver by info()
            self.error = exc

    @property
    def backend(self) -> Backend:
        """The loaded backend; the load's error where it failed."""
        if self._backend is None:
            raise self.error or RuntimeError("the actor's backend is not loaded")
        return self._backend

    def info(self) -> dict[str, Any]:
        return {
            "max_context": int(self.backend.max_context),
            "restarted": self.restarted,
            "pid": os.getpid(),
            "startup_seconds": float(self.backend.stats.get("startup_seconds", 0.0)),
        }

    def _serve(self, n: int) -> None:
        if self.die_after is not None and self.served >= self.die_after:
            os._exit(1)  # the test hook (module docstring): a crash, not a clean exit
        self.served += n

    def _stats(self) -> dict[str, float]:
        stats = self.backend.stats
        return {k: float(stats.get(k, 0)) for k in COUNTED}

    def _delta(self, before: dict[str, float], t0: float) -> dict[str, float]:
        after = self._stats()
        out = {k: after[k] - before[k] for k in COUNTED}
        out["actor_seconds"] = time.perf_counter() - t0
        return out

    def generate(
        self, prompts: list[WirePrompt], kwargs: dict[str, Any]
    ) -> tuple[list[Generation], dict[str, float]]:
        self._serve(len(prompts))
        before, t0 = self._stats(), time.perf_counter()
        texts = [TokenizedPrompt(t, ids) if ids is not None else t for t, ids in prompts]
        gens = self.backend.generate(texts, progress=False, **kwargs)
        return list(gens), self._delta(before, t0)

    def score_labels(
        self, prompts: list[WirePrompt], labels: list[list[str]]
    ) -> tuple[list[list[float]], dict[str, float]]:
        self._serve(len(prompts))
        before, t0 = self._stats(), time.perf_counter()
        texts = [TokenizedPrompt(t, ids) if ids is not None else t for t, ids in prompts]
        scores = self.backend.score_labels(texts, labels, progress=False)
        return [list(s) for s in scores], self._delta(before, t0)

    def token_logprobs(
        self, sequences: list[list[int]], starts: list[int]
    ) -> tuple[list[list[float]], dict[str, float]]:
        self._serve(len(sequences))
        before, t0 = self._stats(), time.perf_counter()
        values = self.backend.token_logprobs(sequences, starts, progress=False)
        return [list(v) for v in values], self._delta(before, t0)
