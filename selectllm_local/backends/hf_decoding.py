"""Decoding helpers of the transformers backend: the ids-grammar gate (``RegexGate``), per-prompt
seeded sampling (``SeededSampling``) and the overlap of host work with the next batch
(``Overlap``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MEMO_MAX = 65_536  # answer prefixes remembered per gate


class RegexGate:
    """Allowed next tokens for one regex, by partial matching of the decoded answer so far."""

    def __init__(
        self, pattern: str, candidate_ids: list[int], strings: list[str], eos: int
    ) -> None:
        import regex

        self.rx = regex.compile(pattern)
        self.cands = candidate_ids
        self.strings = strings
        self.eos = eos
        self._memo: dict[tuple[int, ...], list[int]] = {}  # answer ids so far -> allowed next

    def allowed_after(self, ids: list[int], decode: Callable[[list[int]], str]) -> list[int]:
        """``allowed`` of the answer whose ids so far are ``ids`` (``decode`` gives its text),
        remembered per ids: every prompt of a run walks the same few answer prefixes, and
        scanning the candidates cost about a tenth of a warm select's host time."""
        key = tuple(ids)
        got = self._memo.get(key)
        if got is None:
            if len(self._memo) >= MEMO_MAX:
                self._memo.clear()
            got = self._memo[key] = self.allowed(decode(ids))
        return got

    def allowed(self, text: str) -> list[int]:
        out = [
            t
            for t in self.cands
            if self.strings[t] and self.rx.fullmatch(text + self.strings[t], partial=True)
        ]
        if self.rx.fullmatch(text) or not out:
            out.append(self.eos)
        return out


class SeededSampling:
    """Sampling at ``temperature`` that no batch can change: a logits processor for greedy search.

    ``generate(do_sample=True)`` draws every row of a batch from one global RNG, so a prompt's
    sample depended on its batch mates. Here each row has its own generator, seeded with its
    prompt's ``request_seed``, and adds Gumbel noise to its logits / temperature at each step;
    the argmax of that is an exact sample of softmax(logits / temperature) (the Gumbel-max trick).
    Masked tokens (-inf, the constraint gate) stay masked.
    """

    def __init__(self, seeds: list[int], temperature: float) -> None:
        import torch

        self.temperature = temperature
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        vocab = scores.shape[-1]
        u = torch.stack([torch.rand(vocab, generator=g, dtype=torch.float64) for g in self.gens])
        gumbel = -torch.log(-torch.log(u.clamp(min=1e-300)))
        return scores.float() / self.temperature + gumbel.to(scores.device, torch.float32)


class Overlap:
    """One worker thread that runs each batch's post-processing while the next batch computes.

    Jobs run in submission order; leaving the block waits for all of them and re-raises the
    first error (a callback that fails, Ctrl-C in a callback) in the caller's thread.
    """

    def __enter__(self) -> Overlap:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-post")
        self._futures: list[Any] = []
        return self

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        self._futures.append(self._pool.submit(fn, *args))
        # Surface a failure early instead of computing more batches after it.
        done = [f for f in self._futures if f.done()]
        for f in done:
            f.result()
            self._futures.remove(f)

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        try:
            for f in self._futures:
                if exc_type is None:
                    f.result()
                else:
                    f.cancel()
        finally:
            self._pool.shutdown(wait=True)
