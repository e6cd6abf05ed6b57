"""Selection prompts as token ids, with each candidate tokenized once per run.

Rendering a prompt, counting its tokens to see whether it fits, then tokenizing it again for the
engine cost about as much CPU time per prompt as an 8B model's prefill on a GPU (issue 10). Only
the candidates differ between the prompts of a run, so a prompt is assembled from pieces:

* a **skeleton** per (n, k, labels, mode, round): the template and chat template rendered once with
  placeholders for the candidate texts, cut into the static parts around them, each tokenized once;
* one **unit** per (candidate, token budget): the defused, cut candidate text plus the newline that
  follows it in the skeleton, tokenized once (all of a round's candidates in one batched call;
  ``candidateids.CandidateTokens`` holds the units, the cutting and the derived counts).

The answer example differs per subset (``prompting.subset_example``: a constant one is copied by
small models), so the skeleton holds a placeholder for it too; the static part that holds it (the
tail after the last candidate) is completed with the subset's example and tokenized per prompt
(cached by text). No seam moves: the placeholder sits inside a part, never at its edge.

Concatenating token ids is exact only where the tokenizer cannot merge across a seam. Every seam
here sits right after a newline that follows a non-space character and before a non-space
character: byte-level BPE pre-tokenizers (GPT-2, Llama 3, Qwen) always split there, so no token
crosses it. Anything else (templates that show candidate fields other than ``label`` and
``text``, seams of another shape, tokenizers without a fast backend) takes the plain path:
render, then tokenize the whole prompt once. The first prompt of every skeleton, and every
``VERIFY_EVERY``-th prompt after it, is also built the plain way and compared token for token;
a mismatch switches the fast path off for the rest of the run (logged).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectllm_local.backends.base import Backend, TokenizedPrompt
from selectllm_local.records import PoolItem, Subset
from selectllm_local.selection import prompts as prompting
from selectllm_local.selection.candidateids import CandidateTokens

log = logging.getLogger(__name__)

VERIFY_EVERY = 64
_SLOT = re.compile("\ue000(\\d+)\ue001")
_EXAMPLE = "\ue002"  # placeholder of the per-subset answer example inside a static part
# Template features that make candidates differ in more than their text: plain path only.
_PER_CANDIDATE = re.compile(r"\.\s*(truncated|index|instruction|input)\b|\[\s*['\"]")


@dataclass
class _Skeleton:
    parts: list[str]  # n + 1 static parts, the seam newline already moved into the units
    part_ids: list[list[int]]
    suffix: str  # text glued to the end of every candidate unit ("\n")
    verified: bool = False


def fast_tokenizer(backend: Backend) -> Any | None:
    """The backend's Rust tokenizer (``tokenizers.Tokenizer``) when it has one, else None."""
    tok = backend.tokenizer
    return getattr(tok, "backend_tokenizer", None) if tok is not None else None


def _seam_after(text: str) -> bool:
    """A seam may follow ``text``: it ends with a newline after a non-space character."""
    return len(text) >= 2 and text[-1] == "\n" and not text[-2].isspace()


class PromptBuilder(CandidateTokens):
    """Builds the ``TokenizedPrompt``s of one selection run (one builder per run): the skeletons
    and the prompts here, the candidates' units in ``CandidateTokens``."""

    def __init__(
        self,
        template: prompting.PromptTemplate,
        items: Sequence[PoolItem],
        backend: Backend,
        *,
        special_tokens: Sequence[str],
        count_tokens: Callable[[str], int],
        mode: str,
        seed: int = 0,
        ordered: Callable[[Subset], bool] = lambda subset: False,
        store_root: Path | None = None,
    ) -> None:
        fast = fast_tokenizer(backend)
        enabled = fast is not None and not _PER_CANDIDATE.search(template.source)
        super().__init__(
            items,
            special_tokens,
            fast,
            enabled,
            tokenizer=backend.tokenizer,
            store_root=store_root,
        )
        self.template, self.backend = template, backend
        self.count_tokens, self.mode = count_tokens, mode
        self.seed, self.ordered = seed, ordered  # the answer example's seed; increasing-ids rule
        self.tokenizer = backend.tokenizer
        self._skeletons: dict[tuple[Any, ...], _Skeleton | None] = {}
        self._filled: dict[str, list[int]] = {}  # a part completed with an example -> its ids
        self.built = {"fast": 0, "plain": 0, "verified": 0}

    # -- prompts ------------------------------------------------------------------------------
    def _skeleton(self, subset: Subset, labels: Sequence[str]) -> _Skeleton | None:
        n = len(subset.candidates)
        ordered = self.ordered(subset)
        key = (n, subset.k, tuple(labels[:n]), subset.round, ordered)
        if key in self._skeletons:
            return self._skeletons[key]
        slots = [
            prompting.Candidate(lab, f"\ue000{j}\ue001", False, -1, "", "")
            for j, lab in enumerate(labels[:n])
        ]
        text = self.backend.render_chat(
            prompting.render_candidates(
                self.template,
                subset,
                slots,
                list(labels),
                self.mode,
                ordered=ordered,
                example=_EXAMPLE,
            )
        )
        pieces = _SLOT.split(text)
        parts, nums = pieces[0::2], pieces[1::2]
        skel: _Skeleton | None = None
        ok = nums == [str(j) for j in range(n)] and not any("\ue000" in p for p in parts)
        ok = ok and text.count(_EXAMPLE) <= 1 and not any(p.startswith(_EXAMPLE) for p in parts[1:])
        ok = ok and not any(p.endswith(_EXAMPLE) for p in parts[:-1])
        if ok and all(_seam_after(p) for p in parts[:-1]):
            if all(len(p) >= 2 and p[0] == "\n" and not p[1].isspace() for p in parts[1:]):
                parts = [parts[0]] + [p[1:] for p in parts[1:]]
                skel = _Skeleton(parts, self._encode(parts), "\n")
        if skel is None:
            log.info("prompt template has seams the fast path cannot use: plain tokenization")
        self._skeletons[key] = skel
        return skel

    def build(self, subset: Subset, labels: Sequence[str] | None, budget: int) -> str:
        """The prompt of ``subset`` with candidates cut to ``budget`` tokens: a
        ``TokenizedPrompt`` carrying its ids, or plain text where the backend has no fast
        tokenizer."""
        labels = (
            list(labels) if labels is not None else prompting.numeric_labels(len(subset.candidates))
        )
        skel = self._skeleton(subset, labels) if self.enabled else None
        if skel is None:
            return self._plain(subset, labels, budget)
        units = self._unit_batch(subset.candidates, budget, skel.suffix)
        if any(not u[0] or u[0][0].isspace() or u[0][-1].isspace() for u in units):
            return self._plain(subset, labels, budget)
        example = prompting.subset_example(
            self.template, subset, seed=self.seed, ordered=self.ordered(subset)
        )
        parts = [
            self._fill(p, ids, example) for p, ids in zip(skel.parts, skel.part_ids, strict=True)
        ]
        text_parts, ids = [parts[0][0]], list(parts[0][1])
        for (text, _cut, uids), (part, pids) in zip(units, parts[1:], strict=True):
            text_parts += [text, skel.suffix, part]
            ids += uids
            ids += pids
        prompt = TokenizedPrompt("".join(text_parts), ids)
        self.built["fast"] += 1
        if not skel.verified or self.built["fast"] % VERIFY_EVERY == 0:
            skel.verified = True
            plain = self._plain(subset, labels, budget)
            self.built["verified"] += 1
            if plain != prompt or getattr(plain, "token_ids", None) != prompt.token_ids:
                log.warning(
                    "fast prompt tokenization differs from the tokenizer's on subset %d: "
                    "tokenizing whole prompts for the rest of this run",
                    subset.id,
                )
                self.enabled = False
                self.drop_store(f"the prompt of subset {subset.id} differs")
                return plain
        return prompt

    def _fill(self, part: str, ids: list[int], example: str) -> tuple[str, list[int]]:
        """A static part as this subset shows it: its example filled in (tokenized, cached)."""
        if _EXAMPLE not in part:
            return part, ids
        text = part.replace(_EXAMPLE, example)
        filled = self._filled.get(text)
        if filled is None:
            filled = self._filled[text] = self._encode([text])[0]
        return text, filled

    def _plain(self, subset: Subset, labels: Sequence[str], budget: int) -> str:
        """Render the whole prompt and tokenize it once (the reference the fast path must match)."""
        messages = prompting.render_messages(
            self.template,
            subset,
            self.items,
            max_candidate_tokens=budget,
            count_tokens=self.count_tokens,
            labels=labels,
            mode=self.mode,
            special_tokens=self.special,
            ordered=self.ordered(subset),
            seed=self.seed,
        )
        text = self.backend.render_chat(messages)
        self.built["plain"] += 1
        if self._fast is None or self.tokenizer is None:  # the backend tokenizes the text itself
            return text
        return TokenizedPrompt(text, self.tokenizer.encode(text, add_special_tokens=False))
