"""Build the selector's prompts from editable Jinja2 templates in ``prompts/``.

A template has two blocks, ``system`` and ``user``, rendered into one chat conversation. The
system block holds everything that is the same for every prompt of a run (role, criteria, answer
format), so the engine's prefix cache computes it once; the candidates come after it.

Candidate text is someone else's writing and must not be able to pose as the prompt: each
candidate sits in a ``<candidate id="...">`` ... ``</candidate>`` block, look-alikes of those tags
inside candidate text are defused, and so are the model's special tokens (``<|im_end|>`` and
friends), which a tokenizer would otherwise read as real conversation markers. Long candidates
are cut to ``max_candidate_tokens`` so a prompt's size is bounded before it is sent.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectllm_local.errors import UserError
from selectllm_local.records import PoolItem, Subset, text_hash

DEFAULT_TEMPLATE = "select_ids.j2"
REASONS_TEMPLATE = "select_reasons.j2"
DEFAULT_CRITERIA = "criteria/default.md"
TRUNCATION_MARK = " [...]"
# Letters are single tokens in every tokenizer we know of; checked at run time anyway.
LETTER_LABELS = list(string.ascii_uppercase + string.ascii_lowercase)

_TAG_LOOKALIKE = re.compile(r"<(\s*/?\s*)(candidate)", re.IGNORECASE)
# Common chat-format markers, defused even when the backend does not list its special tokens.
_GENERIC_SPECIALS = re.compile(r"<\|[^|<>\s]{1,40}\|>|\[/?INST\]|<</?SYS>>|</?s>")


def prompts_dir() -> Path:
    """The folder holding the shipped templates and criteria files.

    In a source checkout (editable install) that is the repository's ``prompts/``; in an
    installed wheel it is the packaged copy ``selectllm_local/_prompts``.
    """
    here = Path(__file__).resolve().parent.parent  # the package root, selectllm_local/
    for cand in (here.parent / "prompts", here / "_prompts"):
        if (cand / DEFAULT_TEMPLATE).is_file():
            return cand
    raise UserError(
        f"The prompt templates were not found (looked in {here.parent / 'prompts'} and "
        f"{here / '_prompts'}). Reinstall the package, or pass --prompt and --criteria files."
    )


@dataclass(frozen=True)
class Candidate:
    """One candidate as a template sees it (``c.label``, ``c.text``, ...)."""

    label: str  # identifier shown to the model ("3" or "C")
    text: str  # instruction (+ input), defused and truncated
    truncated: bool
    index: int  # pool index
    instruction: str
    input: str


@dataclass
class PromptTemplate:
    """A loaded template plus its criteria text; ``fingerprint`` changes when either does."""

    source: str
    name: str
    criteria: str
    criteria_name: str
    reasons: bool = False

    @classmethod
    def load(
        cls,
        path: Path | str | None = None,
        criteria: Path | str | None = None,
        reasons: bool = False,
    ) -> PromptTemplate:
        """Load ``path`` (default: the shipped ids or reasons template) and a criteria file."""
        base = None
        if path is None or criteria is None:
            base = prompts_dir()
        tpath = Path(path) if path else base / (REASONS_TEMPLATE if reasons else DEFAULT_TEMPLATE)  # type: ignore[operator]
        cpath = Path(criteria) if criteria else base / DEFAULT_CRITERIA  # type: ignore[operator]
        source = _read(tpath, "--prompt")
        crit = _read(cpath, "--criteria").strip()
        tpl = cls(source, str(tpath), crit, str(cpath), reasons)
        tpl._compile()  # fail now, naming the file, not in the middle of a run
        return tpl

    @property
    def fingerprint(self) -> str:
        return text_hash(f"{self.source}\x00{self.criteria}\x00{self.reasons}")

    def _compile(self) -> Any:
        import jinja2

        try:
            tpl = _jinja(self.source)
        except jinja2.TemplateSyntaxError as exc:
            raise UserError(
                f"The prompt template {self.name} has a Jinja2 syntax error on line {exc.lineno}: "
                f"{exc.message}. Fix the template (variables are listed in prompts/README.md)."
            ) from exc
        missing = {"system", "user"} - set(tpl.blocks)
        if missing:
            raise UserError(
                f"The prompt template {self.name} lacks the block(s) {sorted(missing)}. A template "
                "needs '{% block system %}...{% endblock %}' and '{% block user %}...{% endblock %}' "
                "(see prompts/README.md)."
            )
        return tpl

    def render(self, variables: dict[str, Any]) -> list[dict[str, str]]:
        """Render the two blocks into a chat conversation."""
        import jinja2

        tpl = getattr(self, "_compiled", None) or self._compile()
        object.__setattr__(self, "_compiled", tpl)
        ctx = tpl.new_context({"criteria": self.criteria, **variables})
        try:
            system = "".join(tpl.blocks["system"](ctx)).strip()
            user = "".join(tpl.blocks["user"](ctx)).strip()
        except jinja2.UndefinedError as exc:
            raise UserError(
                f"The prompt template {self.name} uses an unknown variable: {exc.message}. "
                "The variables a template can use are listed in prompts/README.md."
            ) from exc
        messages = [{"role": "user", "content": user}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        return messages


def _read(path: Path, flag: str) -> str:
    if not path.is_file():
        raise UserError(f"{flag} file {path} does not exist. Give the path of an existing file.")
    try:
        return path.read_text("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{flag} file {path} is not UTF-8 text ({exc}).") from exc


def defuse(text: str, special_tokens: Sequence[str] = ()) -> str:
    """Make candidate text unable to close its block or inject chat-format markers."""
    # Most texts hold no "<" or "[", and each marker below starts with one of them (or is a
    # special token that does not): those texts skip the scans (about 5% of a warm select's
    # host time went here). The replacements never add or remove either character.
    angle, square = "<" in text, "[" in text
    for tok in special_tokens:
        if len(tok) > 1 and (angle or tok[0] != "<") and tok in text:
            text = text.replace(tok, tok[0] + "\u200b" + tok[1:])
    if angle or square:
        text = _GENERIC_SPECIALS.sub(lambda m: m.group(0)[0] + "\u200b" + m.group(0)[1:], text)
    if not angle:
        return text
    return _TAG_LOOKALIKE.sub(lambda m: "\u2039" + m.group(1) + m.group(2), text)


@functools.lru_cache(maxsize=16)
def _jinja(source: str) -> Any:
    """A compiled template per source text: compiling takes ~30 ms, and every selection run,
    experiment cell and Ray actor loads the same template."""
    import jinja2

    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False
    )
    return env.from_string(source)


def truncate_to_tokens(
    text: str, max_tokens: int, count_tokens: Callable[[str], int]
) -> tuple[str, bool]:
    """Cut ``text`` (at a character boundary) so it counts at most ``max_tokens`` tokens."""
    steps = truncation(text, max_tokens, count_tokens(TRUNCATION_MARK))
    ask = next(steps)
    while True:
        try:
            ask = steps.send(count_tokens(ask))
        except StopIteration as done:
            return done.value


def truncation(
    text: str, max_tokens: int, mark_tokens: int
) -> Generator[str, int, tuple[str, bool]]:
    """``truncate_to_tokens`` as steps: yields each text to count and is sent its count, so a
    caller can count the steps of many texts in one batched tokenizer call (``promptids``)."""
    # No tokenizer packs more than ~12 characters into a token on average: cut very long texts
    # before tokenizing them at all (a 20k-character context costs ms per count otherwise).
    pre_cut = len(text) > max_tokens * 12
    if pre_cut:
        text = text[: max_tokens * 12]
    n = yield text
    if n <= max_tokens and not pre_cut:
        return text, False
    budget = max(1, max_tokens - mark_tokens)
    # Shrink proportionally until the prefix fits: one or two tokenizer calls, not a bisection.
    cut = len(text)
    while n > budget and cut > 0:
        cut = min(cut - 1, int(cut * budget / n * 0.97))
        n = yield text[:cut]
    space = text.rfind(" ", 0, cut + 1)
    if space > 0.8 * cut:  # end on a word boundary when one is near
        cut = space
    return text[: max(cut, 0)].rstrip() + TRUNCATION_MARK, True


def candidate_text(item: PoolItem) -> str:
    """How one pool item is shown: its instruction, then its input/context when present."""
    if item.input.strip():
        return f"{item.instruction.strip()}\n\nInput:\n{item.input.strip()}"
    return item.instruction.strip()


def numeric_labels(n: int) -> list[str]:
    return [str(i) for i in range(1, n + 1)]


def answer_example(
    k: int, n: int, reasons: bool, *, seed: int | str = 0, ordered: bool = False
) -> str:
    """A format example with ``k`` distinct ids of ``1..n``, drawn per subset from ``seed``.

    A fixed example (always ``[4, 7, 10]``) is copied by small models, so every prompt gets its
    own, seeded by (run seed, round, subset): reproducible, but spread evenly over all positions
    across a run. Sorted only when the grammar demands increasing order (``ordered``).
    """
    import random

    ids = random.Random(f"example:{seed}:{n}:{k}").sample(range(1, n + 1), k)
    if ordered:
        ids.sort()
    if reasons:
        items = ", ".join(f'{{"id": {i}, "reason": "..."}}' for i in ids)
        return f"[{items}]"
    return "[" + ", ".join(map(str, ids)) + "]"


def render_messages(
    template: PromptTemplate,
    subset: Subset,
    items: Sequence[PoolItem],
    *,
    max_candidate_tokens: int,
    count_tokens: Callable[[str], int],
    labels: Sequence[str] | None = None,
    mode: str = "ids",
    special_tokens: Sequence[str] = (),
    ordered: bool = False,
    seed: int = 0,
) -> list[dict[str, str]]:
    """Render one subset (candidates in ``subset.candidates`` order) into chat messages.

    ``ordered``: the answer grammar demands increasing ids (see ``id_constraint``), so the prompt
    must ask for them in that order. ``seed`` varies the answer example between runs.
    """
    n = len(subset.candidates)
    labels = list(labels) if labels is not None else numeric_labels(n)
    if len(labels) < n:
        raise ValueError(f"{n} candidates but only {len(labels)} labels")
    cands = []
    for label, idx in zip(labels, subset.candidates, strict=False):
        item = items[idx]
        text, cut = truncate_to_tokens(
            defuse(candidate_text(item), special_tokens), max_candidate_tokens, count_tokens
        )
        cands.append(Candidate(label, text, cut, idx, item.instruction, item.input))
    example = subset_example(template, subset, seed=seed, ordered=ordered)
    return render_candidates(
        template, subset, cands, labels, mode, ordered=ordered, example=example
    )


def subset_example(template: PromptTemplate, subset: Subset, *, seed: int, ordered: bool) -> str:
    """The answer example one subset's prompt shows (``answer_example`` seeded per subset)."""
    n = len(subset.candidates)
    return answer_example(
        subset.k, n, template.reasons, seed=f"{seed}:{subset.round}:{subset.id}", ordered=ordered
    )


def render_candidates(
    template: PromptTemplate,
    subset: Subset,
    cands: Sequence[Candidate],
    labels: Sequence[str],
    mode: str = "ids",
    *,
    ordered: bool = False,
    example: str,
) -> list[dict[str, str]]:
    """Render already cut candidates into chat messages (``render_messages`` minus the cutting).

    ``example``: the answer example shown (``subset_example``; ``promptids`` passes a placeholder
    so one skeleton serves every subset of a shape)."""
    n = len(subset.candidates)
    variables = {
        "candidates": cands,
        "labels": labels[:n],
        "k": subset.k,
        "n": n,
        "mode": mode,
        "reasons": template.reasons,
        "example": example,
        "ordered": ordered,
        "round": subset.round,
    }
    return template.render(variables)
