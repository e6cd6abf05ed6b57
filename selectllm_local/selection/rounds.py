"""Ask the LLM for picks, subset by subset, until exactly ``budget`` instructions remain.

One round sends every unfinished subset of the plan to the backend in a single batched call (the
engine schedules them; prefix caching reuses the shared system block). Each answer is validated
(``parsing``); each finished subset is handed to ``on_result`` at once, so the caller can append
it to ``responses.jsonl`` while the rest of the batch is still running, and a re-run skips it.

Failure policy of generate mode (``generate.py``), per subset, never silent:

1. first attempt: greedy (``temperature``), constrained to the ids grammar where the backend can;
2. up to ``retries`` more attempts, sampled at ``retry_temperature``; the seed of an attempt is
   ``seed + attempt``, which each backend mixes with the prompt's text (``request_seed``), so a
   retry draws the same numbers whatever batch, Ray shard or resumed run it lands in;
3. **fallback**: the distinct in-range ids of the last answer are kept (in the order given), and
   the rest are drawn from the remaining candidates by a RNG seeded with (seed, round, subset id),
   so the same run always falls back the same way. The result is flagged ``fallback``
   (``picks.py`` holds this and the rest of what is done with an answer: results and counts).

Subsets with ``k >= len(candidates)`` (and a budget equal to the pool) need no call:
``attempts = 0``. When round one's winners outnumber the budget, further rounds
(``subsets.next_round``) choose among the winners, still in diverse subsets, until the budget is
met exactly.

Logprob mode (``logprobs.py``) reads the label log-probabilities at the answer position instead
of generating, keeps every candidate's score, and picks the top ``k``; near-ties at the cut
(``picks.TIE_TOLERANCE``) are broken by a seeded hash, not by batch-dependent float noise.

Context: a prompt is never sent if it cannot fit the model's context with its answer. Candidates
are truncated to ``max_candidate_tokens``, halved as needed down to ``min_candidate_tokens``;
if a subset still does not fit, a UserError names the flags that fix it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

from selectllm_local.backends.base import Backend, Constraint, TokenizedPrompt
from selectllm_local.config import SelectorConfig
from selectllm_local.errors import UserError
from selectllm_local.records import Plan, PoolItem, Subset, SubsetResult
from selectllm_local.selection import grammar, tokencache
from selectllm_local.selection import prompts as prompting
from selectllm_local.selection.generate import generate_round
from selectllm_local.selection.logprobs import logprob_round
from selectllm_local.selection.picks import (
    Key,
    SelectionOutcome,
    count_results,
    matches_plan,
    trivial_result,
)
from selectllm_local.selection.pieces import encode_fast
from selectllm_local.selection.promptids import PromptBuilder, fast_tokenizer

log = logging.getLogger(__name__)


def _single_token_labels(backend: Backend) -> list[str]:
    """The letters that are one token each in the backend's tokenizer, in one batched call where
    it has a fast tokenizer (52 ``count_tokens`` calls cost ~17 ms per run)."""
    letters = prompting.LETTER_LABELS
    fast = fast_tokenizer(backend)
    if fast is None:
        return [lab for lab in letters if backend.count_tokens(lab) == 1]
    encoded = encode_fast(fast, letters)
    return [lab for lab, enc in zip(letters, encoded, strict=True) if len(enc.ids) == 1]


class _Round:
    """Shared state for rendering and fitting the prompts of one selection run."""

    def __init__(self, items: Sequence[PoolItem], backend: Backend, cfg: SelectorConfig) -> None:
        self.items, self.backend, self.cfg = items, backend, cfg
        self.template = prompting.PromptTemplate.load(cfg.prompt, cfg.criteria, reasons=cfg.reasons)
        self.special = list(backend.special_tokens)
        # Candidates are counted again in later rounds, retries and permutations: remember.
        self.count_tokens = functools.lru_cache(maxsize=1 << 16)(backend.count_tokens)
        self.labels: list[str] | None = None
        # The one renderer: backends with a fast tokenizer get prompts assembled from
        # once-tokenized pieces, the others whole rendered text (PromptBuilder._plain).
        self.builder = PromptBuilder(
            self.template,
            items,
            backend,
            special_tokens=self.special,
            count_tokens=self.count_tokens,
            mode="logprobs" if cfg.mode == "logprobs" else "ids",
            seed=cfg.seed,
            ordered=self.ordered,
            store_root=tokencache.default_root(),
        )
        if cfg.mode == "logprobs":
            self.labels = _single_token_labels(backend)
            if len(self.labels) < 2:
                raise UserError(
                    f"--mode logprobs needs single-token labels, but fewer than 2 of the letters "
                    f"A-Z, a-z are single tokens in {backend.model_path}'s tokenizer. Use "
                    "--mode generate."
                )

    def ordered(self, subset: Subset) -> bool:
        """Whether the grammar admits increasing ids only, so the prompt must ask for that."""
        if self.cfg.mode == "logprobs":
            return False
        return grammar.ids_ordered(
            len(subset.candidates),
            subset.k,
            reasons=self.cfg.reasons,
            constrained=self.cfg.constrained,
        )

    def max_tokens(self, subset: Subset) -> int:
        if self.cfg.max_tokens:
            return self.cfg.max_tokens
        if self.cfg.mode == "logprobs":
            return 1
        digits = len(str(len(subset.candidates)))
        per_id = digits + 2 + (140 if self.cfg.reasons else 0)  # reason: <= 120 chars
        return 8 + subset.k * per_id

    def prepare(self, subsets: Sequence[Subset]) -> None:
        """Tokenize every candidate of a round in one batched call (fast path only)."""
        idx = [i for s in subsets for i in s.candidates]
        self.builder.prepare(idx, self.cfg.max_candidate_tokens)

    def constraint(self, subset: Subset) -> Constraint | None:
        """The ids grammar of a subset's shape, built once per (n, k) and run (None: none)."""
        if not self.cfg.constrained or self.cfg.mode == "logprobs":
            return None
        return _id_constraint(len(subset.candidates), subset.k, self.cfg.reasons)

    def render(self, subset: Subset, labels: Sequence[str] | None = None) -> str:
        """Rendered prompt that fits the context, shrinking candidate text if needed."""
        return self.render_sized(subset, labels)[0]

    def render_sized(self, subset: Subset, labels: Sequence[str] | None = None) -> tuple[str, int]:
        """``render`` plus the prompt's token count."""
        limit = self.backend.max_context - self.max_tokens(subset)
        budget = self.cfg.max_candidate_tokens
        while True:
            prompt = self.builder.build(subset, labels, budget)
            size = (
                len(prompt.token_ids)
                if isinstance(prompt, TokenizedPrompt)
                else self.backend.count_tokens(prompt)
            )
            if size <= limit:
                if budget < self.cfg.max_candidate_tokens:
                    log.info("subset %d: candidates cut to %d tokens to fit", subset.id, budget)
                return prompt, size
            if budget <= self.cfg.min_candidate_tokens:
                self._too_long(subset, size, budget)
            budget = max(self.cfg.min_candidate_tokens, budget // 2)

    def _too_long(self, subset: Subset, size: int, budget: int) -> NoReturn:
        raise UserError(
            f"Subset {subset.id} (round {subset.round}, {len(subset.candidates)} "
            f"candidates) needs {size} tokens even with candidates cut to {budget} tokens, "
            f"but the model accepts {self.backend.max_context} (prompt + answer). Use fewer "
            "candidates per prompt (--k), a longer context (--max-model-len), or a lower "
            "--min-candidate-tokens."
        )


@functools.lru_cache(maxsize=256)
def _id_constraint(n: int, k: int, reasons: bool) -> Constraint | None:
    return grammar.id_constraint(n, k, reasons=reasons)


def select(
    plan: Plan,
    items: Sequence[PoolItem],
    backend: Backend | None,
    *,
    cfg: SelectorConfig,
    done: dict[Key, SubsetResult] | None = None,
    on_result: Callable[[SubsetResult], None] | None = None,
    progress: bool = True,
) -> SelectionOutcome:
    """Run every round of the selection; ``done`` results are reused, not re-asked.

    ``backend`` may be None when no subset needs a call (e.g. a budget equal to the pool).
    """
    t_start = time.perf_counter()
    done = dict(done or {})
    results: dict[Key, SubsetResult] = {}
    all_subsets: dict[Key, Subset] = {}
    ctx: _Round | None = None
    called = 0
    resumed = 0

    prompts_sent = [0]

    def emit(res: SubsetResult) -> None:
        results[(res.round, res.subset_id)] = res
        prompts_sent[0] += res.attempts
        if on_result is not None:
            on_result(res)

    round_subsets = _first_round(plan, len(items))
    rnd = round_subsets[0].round if round_subsets else 1
    from selectllm_local.progress import status

    while True:
        all_subsets.update({(s.round, s.id): s for s in round_subsets})
        pending, reused = _sort_round(round_subsets, done, results, emit)
        resumed += reused
        if pending:
            if backend is None:
                raise ValueError("a backend is needed: some subsets need the LLM")
            ctx = ctx or _Round(items, backend, cfg)
            log.info("round %d: asking the LLM about %d subsets", rnd, len(pending))
            called += len(pending)
            run = logprob_round if cfg.mode == "logprobs" else generate_round
            rounds = max(plan.rounds_expected, rnd)
            with status(f"selection round {rnd} of {rounds}", enabled=progress):
                run(pending, ctx, emit, progress)
            ctx.builder.flush_store()  # units cut further to fit, once per round
        winners = [p for s in round_subsets for p in results[(s.round, s.id)].picks]
        if len(winners) == plan.budget:
            break
        if len(winners) < plan.budget:
            raise RuntimeError(f"round {rnd} kept {len(winners)} < budget {plan.budget}")
        rnd += 1
        round_subsets = _next_round(winners, plan, rnd, cfg.seed)
    outcome = _outcome(results, all_subsets, winners, rnd, called, t_start)
    outcome.counts = count_results(results.values(), called_now=called, resumed=resumed)
    outcome.counts["prompts_sent_this_run"] = prompts_sent[0]
    return outcome


def _first_round(plan: Plan, pool_size: int) -> list[Subset]:
    """The plan's subsets; each keeps all its candidates when the budget is the whole pool."""
    if plan.budget >= pool_size:  # everything is selected: no question to ask
        return [
            Subset(s.id, s.candidates, len(s.candidates), s.clusters, s.round) for s in plan.subsets
        ]
    return list(plan.subsets)


def _sort_round(
    round_subsets: list[Subset],
    done: dict[Key, SubsetResult],
    results: dict[Key, SubsetResult],
    emit: Callable[[SubsetResult], None],
) -> tuple[list[Subset], int]:
    """The subsets of a round still to ask the LLM about, and how many results were reused from
    ``done`` (put into ``results``); a subset that needs no question gets its result (``emit``)
    at once."""
    pending: list[Subset] = []
    reused = 0
    for s in round_subsets:
        key = (s.round, s.id)
        prev = done.get(key)
        if prev is not None and matches_plan(prev, s):
            results[key] = prev
            reused += 1
        elif s.k >= len(s.candidates) or s.k == 0:
            emit(trivial_result(s))
        else:
            pending.append(s)
    return pending, reused


def _next_round(winners: list[int], plan: Plan, rnd: int, seed: int) -> list[Subset]:
    """The subsets of round ``rnd``, among the winners of the round before."""
    from selectllm_local.cluster import subsets as subsets_mod

    round_subsets = subsets_mod.next_round(
        winners, plan.labels, plan.budget, rnd, subset_size=plan.n_clusters, seed=seed
    )
    picks_next = sum(s.k for s in round_subsets)
    if not round_subsets or not plan.budget <= picks_next < len(winners):
        raise RuntimeError(
            f"round {rnd}: next_round gave {picks_next} picks for {len(winners)} winners "
            f"and budget {plan.budget}"
        )
    return round_subsets


def _outcome(
    results: dict[Key, SubsetResult],
    all_subsets: dict[Key, Subset],
    winners: list[int],
    rounds: int,
    called: int,
    t_start: float,
) -> SelectionOutcome:
    """The selection's outcome: each selected item's deciding subset (its last win)."""
    final: dict[int, Key] = {}
    for key in sorted(results):
        for p in results[key].picks:
            final[p] = key
    selected = list(winners)
    return SelectionOutcome(
        results=results,
        subsets=all_subsets,
        selected=selected,
        final={p: final[p] for p in selected},
        rounds=rounds,
        llm_called=called > 0,
        seconds=time.perf_counter() - t_start,
    )
