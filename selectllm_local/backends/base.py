"""The one small protocol every LLM backend implements.

A backend renders chat prompts with the model's own template, generates (optionally constrained
to a regex or JSON schema), scores candidate labels by log-probability for the logprob mode,
reads teacher-forced token log-probabilities of given token sequences (``token_logprobs``: the
likelihood selectors, one prefill per text), reports token counts and timings, and frees its
memory on ``close``. Implementations:
``vllm`` (in-process ``vllm.LLM``, CPU or GPU), ``transformers`` (batched ``generate``) and a
scripted fake used only by unit tests of parsing and retry logic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from selectllm_local.config import EngineConfig
from selectllm_local.records import Generation
from selectllm_local.summaries import RaySummary


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


def request_seed(seed: int, prompt: str) -> int:
    """The sampling seed of one prompt: the call's ``seed`` (the selection passes its seed plus
    the attempt number) mixed with the prompt's text. The same prompt at the same attempt draws
    the same numbers in any batch, Ray shard or resumed run; two prompts draw different ones."""
    digest = hashlib.blake2b(f"{seed}\x00{prompt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # < 2**63: what every torch generator takes


@runtime_checkable
class Backend(Protocol):
    """What every caller may use of an engine; nothing outside this is probed with ``getattr``."""

    @property
    def name(self) -> str:
        """The backend's name (``BACKEND_NAMES``)."""
        ...

    @property
    def model_path(self) -> str:
        """The model folder (or name) the engine loaded."""
        ...

    @property
    def options(self) -> EngineConfig:
        """The engine settings it was loaded with."""
        ...

    @property
    def stats(self) -> dict[str, float]:
        """Running counters: ``prompt_tokens``, ``output_tokens`` and what the engine adds
        (``startup_seconds``, ``engine_seconds``, ``cached_prompt_tokens``, ``padding_tokens``)."""
        ...

    @property
    def tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer, or None where there is none (the scripted fake)."""
        ...

    @property
    def special_tokens(self) -> list[str]:
        """The tokenizer's special and added tokens, which pool text must not smuggle in."""
        ...

    @property
    def max_context(self) -> int:
        """Maximum prompt + output tokens the loaded model accepts."""
        ...

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """Apply the model's chat template (with the generation prompt) to one conversation."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def fit_prompt(self, text: str, max_tokens: int) -> str:
        """A raw (non-chat) prompt as the model expects it: with its leading special tokens
        (BOS where the model uses one) and cut from the left to ``max_tokens`` tokens, so the end
        of the prompt (the answer cue) survives."""
        ...

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

        With ``temperature > 0`` each prompt samples from its own ``request_seed(seed, prompt)``,
        so its answer does not depend on which other prompts share its batch.

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

    def token_logprobs(
        self, sequences: list[list[int]], starts: list[int], *, progress: bool = False
    ) -> list[list[float]]:
        """Teacher-forced log-probabilities: for each token sequence, the log-probability of every
        token ``seq[j]`` with ``j >= start`` given ``seq[:j]`` (one prefill, nothing generated).

        ``starts[i] >= 1`` (the first token has no context); the sequences are token ids as the
        model reads them (any BOS included) and must fit the model's context less one token.
        """
        ...

    def ray_summary(self) -> RaySummary | None:
        """The Ray actors that served the calls and how their shards went (``summary.json``'s
        ``ray``); None for an engine in this process."""
        ...

    def close(self) -> None:
        """Free the engine and its (GPU) memory."""
        ...


def fit_prompt(tokenizer: Any, text: str, max_tokens: int) -> str:
    """``Backend.fit_prompt`` for a Hugging Face tokenizer (shared by vLLM and transformers).

    Text is returned unchanged when nothing needs adding or cutting, so no decode/encode round
    trip can alter it; otherwise the kept tokens are decoded with the special tokens spelled out,
    which the backends' ``add_special_tokens=False`` encoding reads back as the same ids.
    """
    lead = list(tokenizer("")["input_ids"])  # what the tokenizer puts around every text (BOS)
    ids = list(tokenizer(text)["input_ids"])
    body = ids[len(lead) :] if lead and ids[: len(lead)] == lead else ids
    room = max(1, max_tokens - len(lead))
    if len(body) <= room:
        return tokenizer.decode(lead) + text if lead else text
    return str(tokenizer.decode(lead + body[-room:]))


def check_windows(sequences: list[list[int]], starts: list[int]) -> None:
    """``token_logprobs`` arguments: one start per sequence, each in ``1 .. len(seq) - 1``."""
    if len(sequences) != len(starts):
        raise ValueError(f"{len(sequences)} sequences but {len(starts)} starts")
    for seq, start in zip(sequences, starts, strict=True):
        if not 1 <= start < len(seq):
            raise ValueError(f"start {start} outside 1..{len(seq) - 1} for a {len(seq)}-token text")


def label_token_ids(tokenizer: Any, labels: list[str]) -> list[int]:
    """Token id of each label; raises ValueError if a label is not exactly one token."""
    out = []
    for lab in labels:
        ids = tokenizer.encode(lab, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"label {lab!r} is {len(ids)} tokens in this tokenizer, not 1")
        out.append(ids[0])
    return out


def plain_chat(messages: list[dict[str, str]], bos: str = "") -> str:
    """A neutral prompt for models without a chat template (base models)."""
    parts = [m["content"] for m in messages]
    return bos + "\n\n".join(parts) + "\n\nAnswer: "


def bos_prefix(tokenizer: Any) -> str:
    """The BOS text a plain prompt must start with, if the tokenizer adds one to plain text.

    Prompts are encoded without special tokens (a chat template writes BOS itself), so a base
    model without a template would never see its BOS; Gemma 3 then answers with repetitions.
    """
    bos_id = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer.encode("a") if bos_id is not None else []
    return str(tokenizer.bos_token) if ids and ids[0] == bos_id else ""


class ChatTokenizer:
    """The tokenizer half of the protocol over a Hugging Face tokenizer: chat rendering, token
    counts, fitting and label ids. The vLLM and transformers backends and the Ray driver (which
    holds a tokenizer, not the weights) share it, so all three render the same prompts."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._has_template = bool(getattr(tokenizer, "chat_template", None))
        self._bos = "" if self._has_template else bos_prefix(tokenizer)
        self._label_ids: dict[tuple[str, ...], list[int]] = {}  # label set -> ids (asked once)

    @property
    def special_tokens(self) -> list[str]:
        toks = set(getattr(self.tokenizer, "all_special_tokens", []) or [])
        toks.update(
            str(t) for t in (getattr(self.tokenizer, "added_tokens_decoder", {}) or {}).values()
        )
        return sorted(toks)

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        if not self._has_template:
            return plain_chat(messages, self._bos)
        return str(
            self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )

    def fit_prompt(self, text: str, max_tokens: int) -> str:
        return fit_prompt(self.tokenizer, text, max_tokens)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def label_token_ids(self, labels: list[str]) -> list[int]:
        """Token id of each label; raises ValueError if a label is not exactly one token. Kept
        per label set: a run asks for the same few sets prompt after prompt (a tokenizer call
        per label cost ~3 ms per prompt at 14 labels)."""
        ids = self._label_ids.get(tuple(labels))
        if ids is None:
            ids = self._label_ids[tuple(labels)] = label_token_ids(self.tokenizer, labels)
        return list(ids)
