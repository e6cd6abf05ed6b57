"""Prompt-token estimation, in one place: how many tokens the selection prompts will read.

Why one estimator: ``plan`` reports the tokens its plan will cost and ``bench --dry-run`` turns the
same count into seconds; two estimators (one summing characters, one rendering prompts) gave two
different answers for the same pool. Both now render every round-one prompt with the real prompt
builder (default template and criteria, candidates cut to ``max_candidate_tokens``) and count it
with the model's tokenizer when one is given, else with a documented heuristic:
``CHARS_PER_TOKEN`` characters per token (English text, within ~15% of Llama-3 and Qwen
tokenizers) over ChatML markup.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from selectllm_local.errors import UserError
from selectllm_local.records import PoolItem, Subset

CHARS_PER_TOKEN = 4.0
DEFAULT_MAX_CANDIDATE_TOKENS = 256  # the selector's default (config.SelectorConfig)

Count = Callable[[str], int]
Render = Callable[[list[dict[str, str]]], str]


def token_counter(tokenizer: str | None) -> tuple[Count, Render, str]:
    """(count_tokens, render_chat, method) from a local tokenizer folder, or the heuristic."""
    if tokenizer:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
        except OSError as exc:
            raise UserError(
                f"--tokenizer {tokenizer}: cannot load a tokenizer there ({exc})."
            ) from exc

        def count(text: str) -> int:
            return len(tok.encode(text, add_special_tokens=False))

        def render(messages: list[dict[str, str]]) -> str:
            if getattr(tok, "chat_template", None):
                return str(
                    tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                )
            return "\n\n".join(m["content"] for m in messages) + "\n\nAnswer: "

        return count, render, f"tokenizer {tokenizer}"
    import jinja2

    from selectllm_local.models.random_weights import CHAT_TEMPLATE

    chat = jinja2.Environment().from_string(CHAT_TEMPLATE)

    def count_h(text: str) -> int:
        return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))

    def render_h(messages: list[dict[str, str]]) -> str:
        return chat.render(messages=messages, add_generation_prompt=True)

    return count_h, render_h, f"heuristic: {CHARS_PER_TOKEN:g} characters per token, ChatML markup"


@dataclass
class PromptTokens:
    """Tokens of each rendered prompt, and of the system block every prompt shares."""

    per_prompt: list[int]
    shared: int
    method: str


def count_prompts(
    subsets: Sequence[Subset],
    items: Sequence[PoolItem],
    *,
    tokenizer: str | None = None,
    max_candidate_tokens: int = DEFAULT_MAX_CANDIDATE_TOKENS,
) -> PromptTokens:
    """Render each subset's prompt (default template) and count its tokens."""
    from selectllm_local.selection import prompts as prompting

    count, render, method = token_counter(tokenizer)
    template = prompting.PromptTemplate.load()
    per_prompt: list[int] = []
    shared: int | None = None
    for s in subsets:
        msgs = prompting.render_messages(
            template, s, items, max_candidate_tokens=max_candidate_tokens, count_tokens=count
        )
        per_prompt.append(count(render(msgs)))
        if shared is None:  # the rendered system block, common to every prompt
            shared = count(render(msgs[:1])) if msgs[0]["role"] == "system" else 0
    return PromptTokens(per_prompt, shared or 0, method)


@dataclass(frozen=True)
class PromptTokenEstimate:
    """Round-one prompts that need an LLM call and their tokens: ``plan_summary.json``'s
    ``prompt_tokens_estimate`` (``to_dict`` writes it; ``from_dict`` reads a saved one back)."""

    method: str
    """How the tokens were counted: ``tokenizer FOLDER`` or the heuristic (``token_counter``)."""
    prompts: int
    total: int
    mean_per_prompt: float
    max_per_prompt: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptTokenEstimate:
        return cls(
            method=str(d["method"]),
            prompts=int(d["prompts"]),
            total=int(d["total"]),
            mean_per_prompt=float(d["mean_per_prompt"]),
            max_per_prompt=int(d["max_per_prompt"]),
        )


def estimate_prompt_tokens(
    subsets: Sequence[Subset],
    items: Sequence[PoolItem],
    *,
    tokenizer: str | None = None,
    max_candidate_tokens: int = DEFAULT_MAX_CANDIDATE_TOKENS,
) -> PromptTokenEstimate:
    """The plan summary's estimate: round-one prompts that need an LLM call, and their tokens."""
    calls = [s for s in subsets if s.k < len(s.candidates)]
    counted = count_prompts(
        calls, items, tokenizer=tokenizer, max_candidate_tokens=max_candidate_tokens
    )
    per = counted.per_prompt
    return PromptTokenEstimate(
        method=counted.method,
        prompts=len(per),
        total=int(sum(per)),
        mean_per_prompt=float(sum(per) / len(per)) if per else 0.0,
        max_per_prompt=int(max(per)) if per else 0,
    )
