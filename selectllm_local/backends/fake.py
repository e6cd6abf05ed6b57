"""A scripted backend for unit tests of parsing, retry and fallback logic only.

Real behaviour is tested with the real engines (``tests/conftest.py``); this fake exists so a test
can say "the first answer is prose with ids out of range, the retry is valid" and check exactly
how the selection stage counts and records it. It renders chats as plain text and counts tokens
as whitespace-separated words.

It is also selectable by name (``--backend fake``) so tests of the pipeline's own logic can run the
whole CLI without a model. ``block_after=n`` (option ``extra["fake"]["block_after"]`` or the
environment variable ``SELECTLLM_FAKE_BLOCK_AFTER``, for a CLI run in a subprocess) makes it
deliver ``n`` answers and then wait until a signal interrupts it: a test of Ctrl-C can then send
SIGINT while the run is certainly in flight, whatever the machine's speed.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import Any

from selectllm_local.backends.base import Constraint
from selectllm_local.config import EngineConfig
from selectllm_local.records import Generation
from selectllm_local.summaries import RaySummary

# script(prompt, call_number) -> answer text (str or bytes); call_number counts calls per prompt
Script = Callable[[str, int], "str | bytes"]


class FakeBackend:
    """``Backend`` whose answers come from ``script``; records every call for assertions."""

    name = "fake"

    def __init__(
        self,
        script: Script | None = None,
        *,
        max_context: int = 100_000,
        scorer: Callable[[str, list[str]], list[float]] | None = None,
        block_after: int | None = None,
    ) -> None:
        self.model_path = "fake"
        self.block_after = block_after
        self._delivered = 0
        self.script = script or _first_ids
        self.scorer = scorer or (lambda prompt, labels: [-float(i) for i in range(len(labels))])
        self._ctx = max_context
        self.calls: list[list[str]] = []  # prompts of each generate/score call
        self.constraints: list[list[Constraint | None]] = []
        self._seen: dict[str, int] = {}
        self.special_tokens: list[str] = ["<|im_start|>", "<|im_end|>"]
        self.stats: dict[str, float] = {"prompt_tokens": 0, "output_tokens": 0}
        self.options = EngineConfig(backend="fake", max_model_len=max_context)
        self.tokenizer: Any = None  # scripted: no Hugging Face tokenizer behind it

    @classmethod
    def from_options(cls, options: EngineConfig) -> FakeBackend:
        """The fake as ``--backend fake`` loads it: default script, optional ``block_after``."""
        opts: dict[str, Any] = dict(options.extra.get("fake", {}))
        env = os.environ.get("SELECTLLM_FAKE_BLOCK_AFTER")
        if env and "block_after" not in opts:
            opts["block_after"] = int(env)
        ctx = options.max_model_len or 100_000
        fake = cls(max_context=ctx, block_after=opts.get("block_after"))
        fake.options = options
        return fake

    def _delivered_one(self) -> None:
        """Count a delivered answer; past ``block_after``, wait until a signal interrupts."""
        self._delivered += 1
        if self.block_after is not None and self._delivered >= self.block_after:
            while True:  # ends only by an exception from a signal handler (KeyboardInterrupt)
                time.sleep(3600)

    @property
    def max_context(self) -> int:
        return self._ctx

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def fit_prompt(self, text: str, max_tokens: int) -> str:
        words = text.split()
        return text if len(words) <= max_tokens else " ".join(words[-max_tokens:])

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
        self.calls.append(list(prompts))
        self.constraints.append(list(constraints or [None] * len(prompts)))
        out = []
        for i, p in enumerate(prompts):
            n = self._seen.get(p, 0)
            self._seen[p] = n + 1
            raw = self.script(p, n)
            text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
            gen = Generation(text, self.count_tokens(p), len(text.split()))
            out.append(gen)
            if on_output is not None:
                on_output(i, gen)
            self._delivered_one()
        return out

    def score_labels(
        self,
        prompts: list[str],
        labels: list[list[str]],
        *,
        progress: bool = False,
        on_output: Callable[[int, list[float]], None] | None = None,
    ) -> list[list[float]]:
        self.calls.append(list(prompts))
        out = []
        for i, (p, labs) in enumerate(zip(prompts, labels, strict=True)):
            scores = self.scorer(p, labs)
            out.append(scores)
            if on_output is not None:
                on_output(i, scores)
        return out

    def token_logprobs(
        self, sequences: list[list[int]], starts: list[int], *, progress: bool = False
    ) -> list[list[float]]:
        from selectllm_local.errors import UserError

        raise UserError(
            "The fake backend has no model, so it cannot score likelihoods (ifd, cluster-ifd); "
            "use --backend vllm or transformers."
        )

    def label_token_ids(self, labels: list[str]) -> list[int]:
        return [ord(lab[0]) if len(lab) == 1 else -1 for lab in labels]

    def ray_summary(self) -> RaySummary | None:
        return None  # runs in this process

    def close(self) -> None:
        pass


def _first_ids(prompt: str, call: int) -> str:
    """Default script: pick the first k candidates shown (k read from the prompt)."""
    m = re.search(r"Choose exactly (\d+)", prompt)
    k = int(m.group(1)) if m else 1
    return "[" + ", ".join(str(i) for i in range(1, k + 1)) + "]"
