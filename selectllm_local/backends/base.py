"""The one small protocol every LLM backend implements.

A backend renders chat prompts with the model's own template, generates (optionally constrained
to a regex or JSON schema), scores candidate labels by log-probability for the logprob mode,
reports token counts and timings, and frees its memory on ``close``. Implementations:
``vllm`` (in-process ``vllm.LLM``, CPU or GPU), ``transformers`` (batched ``generate``) and a
scripted fake used only by unit tests of parsing and retry logic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from selectllm_local.records import Generation

BackendName = Literal["auto", "vllm", "transformers"]


@dataclass(frozen=True)
class Constraint:
    """Decoding constraint for one prompt: a regex or a JSON schema (at most one)."""

    regex: str | None = None
    json_schema: dict[str, Any] | None = None


class TokenizedPrompt(str):
    """A rendered prompt that also carries its token ids (``add_special_tokens=False``).

    The selection stage tokenizes each candidate once and assembles a prompt's ids from cached
    pieces; backends that take token ids (vLLM, transformers) read ``token_ids`` instead of
    tokenizing the text again. It is still a ``str``, so any backend can treat it as text.
    """

    token_ids: list[int]

    def __new__(cls, text: str, token_ids: list[int]) -> TokenizedPrompt:
        obj = super().__new__(cls, text)
        obj.token_ids = token_ids
        return obj


def prompt_token_ids(prompt: str, tokenizer: Any) -> list[int]:
    """Token ids of one prompt: carried ones when present, else the tokenizer's."""
    ids = getattr(prompt, "token_ids", None)
    if ids is not None:
        return list(ids)
    return list(tokenizer.encode(prompt, add_special_tokens=False))


@dataclass
class BackendOptions:
    """Options shared by all backends; each backend ignores what it cannot use."""

    dtype: str = "auto"  # "auto" | "bfloat16" | "float16" | "float32"
    max_model_len: int | None = None  # None = the model's own context length
    seed: int = 0
    # vLLM
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    enable_prefix_caching: bool = True
    max_num_seqs: int | None = None
    enforce_eager: bool = False
    # transformers
    batch_size: int | None = None  # None: 16 on CPU, sized from free memory on CUDA
    device: str | None = None  # None = cuda if available else cpu
    # LoRA adapter to apply (evaluation of fine-tuned models)
    lora_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    name: str
    model_path: str

    @property
    def max_context(self) -> int:
        """Maximum prompt + output tokens the loaded model accepts."""
        ...

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """Apply the model's chat template (with the generation prompt) to one conversation."""
        ...

    def count_tokens(self, text: str) -> int: ...

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
        """Generate one answer per rendered prompt, in order, as one batched call.

        ``on_output(i, generation)`` is called as soon as prompt ``i`` is finished (before the
        whole batch is), so callers can persist finished work while the rest is in flight.
        """
        ...

    def score_labels(
        self,
        prompts: list[str],
        labels: list[list[str]],
        *,
        progress: bool = False,
        on_output: Callable[[int, list[float]], None] | None = None,
    ) -> list[list[float]]:
        """Log-probability of each label's token at the first answer position, per prompt.

        Labels must be single tokens in the model's tokenizer (check with ``single_token_labels``).
        """
        ...

    def close(self) -> None:
        """Free the engine and its (GPU) memory."""
        ...


def label_token_ids(tokenizer: Any, labels: list[str]) -> list[int]:
    """Token id of each label; raises ValueError if a label is not exactly one token."""
    out = []
    for lab in labels:
        ids = tokenizer.encode(lab, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"label {lab!r} is {len(ids)} tokens in this tokenizer, not 1")
        out.append(ids[0])
    return out
