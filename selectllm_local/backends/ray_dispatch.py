"""The driver's ``ray.wait`` loop: shards to actors, results back as they finish, deaths handled.

Each actor has at most ``IN_FLIGHT_PER_ACTOR`` shards at once (one computing, one queued), so a
fast actor takes more shards than a slow one. When a shard fails because its actor died, the actor
is marked down and the shard goes back to the front of the queue, to be served by an actor that is
up; Ray restarts the dead actor (``max_restarts``), and a ping that Ray retries until the restart
is over (``max_task_retries=-1`` on that call only) marks it up again. Results of a failed shard
never arrived, so re-queueing can neither lose nor double a prompt. A shard that failed
``max_restarts + 1`` times is given up (its prompts count as unanswered); when no actor can come
back the run stops with a UserError.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from selectllm_local.errors import UserError

log = logging.getLogger(__name__)

IN_FLIGHT_PER_ACTOR = 2


class ShardDispatcher:
    """Actor health across calls, and the loop that serves one call's shards."""

    def __init__(self, ray: Any, actors: list[Any], max_restarts: int) -> None:
        self.ray, self.actors, self.max_restarts = ray, actors, max_restarts
        self.up = [True] * len(actors)
        self.deaths = [0] * len(actors)
        self.pings: dict[Any, int] = {}  # ping ref -> actor index, while the actor restarts
        self.counters = {"shards": 0, "shards_requeued": 0, "actor_restarts": 0,
                         "prompts_unanswered": 0}  # fmt: skip

    def _down(self, a: int, exc: Exception) -> None:
        if not self.up[a]:
            return
        self.up[a] = False
        self.deaths[a] += 1
        if self.deaths[a] <= self.max_restarts:
            self.counters["actor_restarts"] += 1
            log.warning("Ray actor %d failed (%s); Ray restarts it", a, type(exc).__name__)
            self.pings[self.actors[a].info.options(max_task_retries=-1).remote()] = a
        else:
            log.warning("Ray actor %d failed (%s) and is not restarted again", a, exc)

    def _ping_back(self, ref: Any) -> None:
        a = self.pings.pop(ref)
        try:
            self.ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - the actor did not come back
            self.deaths[a] = self.max_restarts + 1
            log.warning("Ray actor %d did not come back after a restart: %s", a, exc)
            return
        self.up[a] = True
        log.info("Ray actor %d is back", a)

    def run(
        self,
        shards: list[list[int]],
        submit: Callable[[Any, list[int]], Any],
        deliver: Callable[[list[int], Any], None],
        give_up: Callable[[list[int]], None],
    ) -> None:
        """Serve ``shards``; ``deliver(shard, result)`` as each returns, ``give_up(shard)`` for a
        shard that failed too often."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        queue = deque(shards)
        self.counters["shards"] += len(shards)
        tries: dict[int, int] = {}  # shard (by its first index) -> failed attempts
        busy = [0] * len(self.actors)
        in_flight: dict[Any, tuple[int, list[int]]] = {}
        while queue or in_flight:
            for a in sorted(range(len(self.actors)), key=lambda a: busy[a]):
                while self.up[a] and queue and busy[a] < IN_FLIGHT_PER_ACTOR:
                    shard = queue.popleft()
                    in_flight[submit(self.actors[a], shard)] = (a, shard)
                    busy[a] += 1
            if not in_flight and not self.pings:
                raise UserError(
                    f"All {len(self.actors)} Ray actors died more than --ray-max-restarts "
                    f"{self.max_restarts} times. Finished subsets are saved; see the actors' logs "
                    "(the driver's stderr, or `ray logs`), fix the cause and run the same command "
                    "again to resume."
                )
            ready, _ = self.ray.wait([*in_flight, *self.pings], num_returns=1)
            for ref in ready:
                if ref in self.pings:
                    self._ping_back(ref)
                    continue
                a, shard = in_flight.pop(ref)
                busy[a] -= 1
                try:
                    result = self.ray.get(ref)
                except (RayActorError, ActorUnavailableError) as exc:
                    self._down(a, exc)
                    tries[shard[0]] = tries.get(shard[0], 0) + 1
                    if tries[shard[0]] > self.max_restarts:
                        log.warning("a shard of %d prompts failed %d times; its prompts count as "
                                    "unanswered", len(shard), tries[shard[0]])  # fmt: skip
                        self.counters["prompts_unanswered"] += len(shard)
                        give_up(shard)
                    else:
                        self.counters["shards_requeued"] += 1
                        queue.appendleft(shard)
                    continue
                deliver(shard, result)
