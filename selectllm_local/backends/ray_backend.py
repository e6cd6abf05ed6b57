"""``RayBackend``: the backend protocol served by Ray actors, so selection code is unchanged.

``load_backend`` returns one when ``--ray`` is given. The driver renders and tokenizes prompts
exactly as in one process (it loads the model's tokenizer, not its weights), cuts each
``generate``/``score_labels`` call into shards and hands them to actors
(``ray_actor.ShardServer``, one per GPU, or per ``--ray-cpus-per-actor`` CPUs), each holding one
of our backends with the same ``EngineConfig``. A ``ray.wait`` loop keeps two shards in flight per
actor (one computing, one queued) and calls ``on_output`` for every prompt of a shard as the shard
comes back (``ray_dispatch``), so the caller appends to ``responses.jsonl`` as in one process: kill and resume,
retries and fallbacks are the selection stage's, untouched.

Failures: actors are created with ``max_restarts`` (``--ray-max-restarts``) and no task retries:
when an actor dies, the driver re-queues every shard it had in flight (their results never
arrived, so nothing is counted twice) and Ray restarts the actor, which reloads its model. A shard
that has failed ``max_restarts + 1`` times is given up: its prompts count as unanswered, which the
selection retries and then falls back on, as for any unanswered prompt. When every actor is dead
for good the run stops with a UserError (finished subsets are saved). ``ray_summary`` reports
actors, shards, re-queued shards and actor restarts for ``summary.json``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from selectllm_local.backends.base import ChatTokenizer, Constraint
from selectllm_local.backends.ray_cluster import connect, forwarded_env, unwrap_task_error
from selectllm_local.config import EngineConfig
from selectllm_local.errors import UserError
from selectllm_local.records import Generation
from selectllm_local.summaries import RaySummary

log = logging.getLogger(__name__)


def _auto_tokenizer(model_path: str) -> Any:
    """The model's tokenizer alone: the driver renders prompts, the actors hold the weights."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


SHARDS_PER_ACTOR = 4  # default shard size: each actor gets about this many shards per call
MAX_SHARD = 256


class RayBackend:
    """``Backend`` whose ``generate``/``score_labels`` run on Ray actors (module docstring)."""

    def __init__(
        self, backend: str, model: str, resolved_model: str, options: EngineConfig, *,
        offline: bool = False,
    ) -> None:  # fmt: skip
        from selectllm_local.backends.fake import FakeBackend

        assert options.ray is not None
        t0 = time.perf_counter()
        self.ray = ray = connect(options.ray)
        from selectllm_local.backends.ray_actor import ShardServer
        from selectllm_local.backends.ray_dispatch import ShardDispatcher

        self.name, self.model_path, self.options = backend, resolved_model, options
        self._face: ChatTokenizer | FakeBackend = (
            FakeBackend.from_options(options)
            if backend == "fake"
            else ChatTokenizer(_auto_tokenizer(resolved_model))
        )
        res = ray.cluster_resources()
        cluster_gpus, cluster_cpus = float(res.get("GPU", 0)), float(res.get("CPU", 0))
        gpus = options.ray_gpus_per_actor
        if gpus is None:
            gpus = float(options.tensor_parallel_size) if cluster_gpus > 0 else 0.0
        cpus = options.ray_cpus_per_actor
        n = options.ray_actors or max(
            1, int(cluster_gpus // gpus) if gpus > 0 else int(cluster_cpus // cpus)
        )
        if n * gpus > cluster_gpus or n * cpus > cluster_cpus:
            raise UserError(
                f"--ray-actors {n} needs {n * gpus:g} GPUs and {n * cpus:g} CPUs, but the Ray "
                f"cluster has {cluster_gpus:g} GPUs and {cluster_cpus:g} CPUs. Use fewer "
                "actors (--ray-actors), fewer resources per actor (--ray-cpus-per-actor, "
                "--ray-gpus-per-actor), or add nodes."
            )
        server = ray.remote(ShardServer).options(
            num_cpus=cpus,
            num_gpus=gpus,
            max_restarts=options.ray_max_restarts,
            max_task_retries=0,
            runtime_env={"env_vars": forwarded_env()},
        )
        inner = replace(options, ray=None)
        self.actors = [server.remote(i, backend, model, inner, offline) for i in range(n)]
        try:
            infos = ray.get([a.info.remote() for a in self.actors])
        except Exception as exc:
            self.close()
            err = unwrap_task_error(exc)
            if isinstance(err, UserError):
                raise err from None
            raise
        self._ctx = min(int(i["max_context"]) for i in infos)
        self.gpus_per_actor, self.cpus_per_actor, self.n_actors = gpus, cpus, n
        self.dispatcher = ShardDispatcher(ray, self.actors, int(options.ray_max_restarts))
        self.stats: dict[str, float] = {
            "startup_seconds": time.perf_counter() - t0,
            "prompt_tokens": 0,
            "output_tokens": 0,
            "cached_prompt_tokens": 0,
            "padding_tokens": 0,
            "engine_seconds": 0.0,
            "actor_seconds": 0.0,
        }
        log.info(
            "%d Ray actors ready (%s backend, %g GPUs and %g CPUs each) in %.1f s",
            n, backend, gpus, cpus, self.stats["startup_seconds"],
        )  # fmt: skip

    # -- the driver-side half of the protocol ------------------------------------------------
    @property
    def max_context(self) -> int:
        return self._ctx

    @property
    def tokenizer(self) -> Any:
        return self._face.tokenizer

    @property
    def special_tokens(self) -> list[str]:
        return list(self._face.special_tokens)

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return str(self._face.render_chat(messages))

    def count_tokens(self, text: str) -> int:
        return int(self._face.count_tokens(text))

    def fit_prompt(self, text: str, max_tokens: int) -> str:
        return str(self._face.fit_prompt(text, max_tokens))

    def label_token_ids(self, labels: list[str]) -> list[int]:
        return list(self._face.label_token_ids(labels))

    def ray_summary(self) -> RaySummary:
        """What ``summary.json`` records under ``ray``."""
        return RaySummary(
            address=self.options.ray,
            actors=self.n_actors,
            gpus_per_actor=self.gpus_per_actor,
            cpus_per_actor=self.cpus_per_actor,
            **self.dispatcher.counters,
            actor_seconds=round(self.stats["actor_seconds"], 3),
        )

    # -- the sharded half ---------------------------------------------------------------------
    def generate(
        self,
        prompts: list[str],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        seed: int = 0,
        constraints: list[Constraint | None] | None = None,
        progress: bool = False,
        on_output: Callable[[int, Generation], None] | None = None,
    ) -> list[Generation]:
        cons = list(constraints) if constraints is not None else [None] * len(prompts)
        kwargs = {"max_tokens": max_tokens, "temperature": temperature, "seed": seed}
        out: list[Generation | None] = [None] * len(prompts)

        def submit(actor: Any, idx: list[int]) -> Any:
            shard_kwargs = {**kwargs, "constraints": [cons[i] for i in idx]}
            return actor.generate.remote(_wire(prompts, idx), shard_kwargs)

        def deliver(i: int, gen: Generation) -> None:
            out[i] = gen
            if on_output is not None:
                on_output(i, gen)

        self._dispatch(len(prompts), submit, deliver, progress, "selecting (Ray)")
        return [g if g is not None else Generation("", 0, 0) for g in out]

    def score_labels(
        self,
        prompts: list[str],
        labels: list[list[str]],
        *,
        progress: bool = False,
        on_output: Callable[[int, list[float]], None] | None = None,
    ) -> list[list[float]]:
        out: list[list[float]] = [[] for _ in prompts]

        def submit(actor: Any, idx: list[int]) -> Any:
            return actor.score_labels.remote(_wire(prompts, idx), [labels[i] for i in idx])

        def deliver(i: int, scores: list[float]) -> None:
            out[i] = scores
            if on_output is not None:
                on_output(i, scores)

        self._dispatch(len(prompts), submit, deliver, progress, "scoring (Ray)")
        return out

    def token_logprobs(
        self, sequences: list[list[int]], starts: list[int], *, progress: bool = False
    ) -> list[list[float]]:
        from selectllm_local.backends.base import check_windows

        check_windows(sequences, starts)
        out: list[list[float]] = [[] for _ in sequences]

        def submit(actor: Any, idx: list[int]) -> Any:
            shard = [list(sequences[i]) for i in idx]
            return actor.token_logprobs.remote(shard, [starts[i] for i in idx])

        def deliver(i: int, values: list[float]) -> None:
            out[i] = values

        self._dispatch(len(sequences), submit, deliver, progress, "likelihood (Ray)")
        return out

    def _shard_size(self, n: int) -> int:
        if self.options.ray_shard_size:
            return self.options.ray_shard_size
        return max(1, min(MAX_SHARD, math.ceil(n / (len(self.actors) * SHARDS_PER_ACTOR))))

    def _dispatch(
        self,
        n: int,
        submit: Callable[[Any, list[int]], Any],
        deliver: Callable[[int, Any], None],
        progress: bool,
        what: str,
    ) -> None:
        """Serve prompts ``0..n-1`` in shards; ``deliver`` each result as its shard returns."""
        from selectllm_local.progress import progress_bar

        size = self._shard_size(n)
        shards = [list(range(s, min(s + size, n))) for s in range(0, n, size)]
        t0 = time.perf_counter()
        with progress_bar(what, total=n, enabled=progress) as advance:

            def delivered(shard: list[int], result: Any) -> None:
                results, stats = result
                for k, v in stats.items():
                    self.stats[k] = self.stats.get(k, 0.0) + v
                for i, r in zip(shard, results, strict=True):
                    deliver(i, r)
                advance(len(shard))

            self.dispatcher.run(shards, submit, delivered, lambda shard: advance(len(shard)))
        self.stats["engine_seconds"] += time.perf_counter() - t0

    def close(self) -> None:
        """End the actors (and free their GPUs); the cluster itself is left running."""
        for actor in getattr(self, "actors", []):
            self.ray.kill(actor, no_restart=True)
        self.actors = []


def _wire(prompts: list[str], idx: list[int]) -> list[tuple[str, list[int] | None]]:
    """Prompts as they travel: text and carried token ids (a ``TokenizedPrompt`` does not
    pickle with its ids)."""
    out = []
    for i in idx:
        ids = getattr(prompts[i], "token_ids", None)
        out.append((str(prompts[i]), list(ids) if ids is not None else None))
    return out
