"""Hugging Face transformers backend: works wherever torch does, and is the benchmark baseline.

Batched ``generate`` with left padding wastes compute on pad tokens when prompts of different
lengths share a batch (16% of prompt tokens at batch 8-16 on Dolly subsets). Prompts are therefore
sorted by length and cut into buckets whose padding stays under ``max_padding`` of their real
tokens; the padding spent is reported in ``stats``. Decoding is greedy unless a temperature is
given; sampling draws from one generator per prompt (``SeededSampling``), so a prompt's sample
does not depend on its batch. A light constrained mode covers the ids grammar: at each step only tokens that keep the
answer a prefix of the constraint regex are allowed (checked with ``regex`` partial matching over
the few tokens made of the grammar's characters); open-ended grammars (reasons) are parsed only.

``token_logprobs`` (the likelihood selectors) runs the decoder once per batch and applies the output
head only to the positions that are scored, a few hundred at a time: the full logits of a batch
(batch x length x vocabulary, 3 GB in float32 for 16 texts of 1,024 tokens and SmolLM2's 49k
vocabulary) are never built.
"""

from __future__ import annotations

import array
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from selectllm_local import hardware
from selectllm_local.backends.base import (
    ChatTokenizer,
    Constraint,
    check_windows,
    prompt_token_ids,
    request_seed,
)
from selectllm_local.backends.batchsize import (
    CPU_BATCH,
    ModelMemory,
    bucket_by_length,
    gpu_batch_size,
)
from selectllm_local.backends.hf_decoding import Overlap, RegexGate, SeededSampling
from selectllm_local.config import EngineConfig
from selectllm_local.progress import progress_bar, quiet_weight_bars
from selectllm_local.records import Generation
from selectllm_local.summaries import RaySummary

log = logging.getLogger(__name__)

HEAD_CHUNK = 256  # token_logprobs: positions per output-head product (256 x vocab floats)


def token_strings(tokenizer: Any) -> list[str]:
    """Every token id's text as ``tokenizer.decode([id])`` gives it. Where that decode is the
    Rust decoder's alone (a fast tokenizer whose class keeps the library's ``decode`` and
    ``_decode`` and cleans up no spaces), one batched Rust call gives the same strings at a
    third to two thirds of the CPU (SmolLM2's 49k tokens: 0.08 s against 0.28; Gemma 3's 262k:
    0.97 s against 1.49), once per run of the transformers backend's constraint gate."""
    from transformers import PreTrainedTokenizerFast

    n = len(tokenizer)
    cls = type(tokenizer)
    fast: Any = getattr(tokenizer, "backend_tokenizer", None)
    plain = (
        fast is not None
        and getattr(tokenizer, "clean_up_tokenization_spaces", True) is False
        and getattr(cls, "_decode", None) is getattr(PreTrainedTokenizerFast, "_decode", 0)
        and getattr(cls, "decode", None) is getattr(PreTrainedTokenizerFast, "decode", 0)
    )
    if plain:
        return list(fast.decode_batch([[i] for i in range(n)], skip_special_tokens=False))
    return [tokenizer.decode([i]) for i in range(n)]


def _label_logprobs(last: Any, ids: list[list[int]]) -> list[list[float]]:
    """Each row's log-probabilities of its label ids, from the last position's logits (rows x
    vocabulary). On a CPU in numpy, row by row on this thread: torch's log-softmax over the whole
    batch woke its thread pool, whose spinning cost ~0.4 ms of CPU per prompt around a fast
    forward pass (``benchmarks/README.md``); elsewhere on the device, only the labels copied back."""
    import numpy as np
    import torch

    if last.device.type != "cpu":
        logp = torch.log_softmax(last.float(), dim=-1)
        return [[float(x) for x in logp[r, row].tolist()] for r, row in enumerate(ids)]
    x = last.float().numpy()
    out = []
    for r, row in enumerate(ids):
        v = x[r]
        top = v.max()
        lse = top + np.log(np.exp(v - top).sum(dtype=np.float64))
        out.append([float(v[j]) - float(lse) for j in row])
    return out


class HFBackend(ChatTokenizer):
    """``Backend`` over ``AutoModelForCausalLM.generate``."""

    name = "transformers"

    def __init__(self, model_path: str, options: EngineConfig) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t0 = time.perf_counter()
        self.model_path = model_path
        self.options = options
        self.device = hardware.default_device(options.device)
        dtype = _torch_dtype(options.dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        with quiet_weight_bars(model_path):
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        if options.lora_path:
            from peft import PeftModel

            # merged into the weights: generation then runs at the base model's speed
            model = PeftModel.from_pretrained(model, options.lora_path).merge_and_unload()
        self.model = model.to(self.device).eval()
        torch.manual_seed(options.seed)
        self._ctx = int(
            options.max_model_len
            or getattr(self.model.config, "max_position_embeddings", None)
            or self.tokenizer.model_max_length
        )
        ChatTokenizer.__init__(self, self.tokenizer)
        self._vocab: list[str] | None = None
        self._gates: dict[str, RegexGate] = {}
        self._every_id: list[int] = []  # every token id (``_all_ids``)
        self.stats: dict[str, float] = {
            "startup_seconds": time.perf_counter() - t0,
            "prompt_tokens": 0,
            "output_tokens": 0,
            "padding_tokens": 0,
            "engine_seconds": 0.0,
        }
        log.info(
            "transformers model ready on %s (%s) in %.1f s",
            self.device,
            dtype,
            self.stats["startup_seconds"],
        )

    @property
    def max_context(self) -> int:
        return self._ctx

    # -- batching -----------------------------------------------------------------------------
    def _batches(
        self, prompts: list[str], new_tokens: int = 1
    ) -> tuple[list[list[int]], list[list[int]]]:
        encoded = [prompt_token_ids(p, self.tokenizer) for p in prompts]
        longest = max((len(e) for e in encoded), default=1)
        size = self._batch_size(longest, new_tokens)
        batches = bucket_by_length([len(e) for e in encoded], size, new_tokens=new_tokens)
        return encoded, batches

    def _batch_size(self, prompt_tokens: int, new_tokens: int) -> int:
        """``--batch-size`` when given; on CUDA sized from free memory; else ``CPU_BATCH``."""
        if self.options.batch_size:
            return int(self.options.batch_size)
        if not str(self.device).startswith("cuda"):
            return CPU_BATCH
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(self.device))
        mem = ModelMemory.from_config(self.model.config, self.model.dtype.itemsize)
        n = gpu_batch_size(mem, free_bytes=free, prompt_tokens=prompt_tokens, new_tokens=new_tokens)
        log.info(
            "batch size %d (%.1f GiB free, prompts up to %d tokens)", n, free / 2**30, prompt_tokens
        )
        return n

    def _pad(self, seqs: list[list[int]]) -> tuple[Any, Any]:
        import numpy as np
        import torch

        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        # filled in numpy and shared with torch: a torch.tensor per row cost ~0.5 ms per prompt;
        # each row goes through array.array, whose C loop reads the ints at half numpy's cost
        arr = np.full((len(seqs), width), pad, dtype=np.int64)
        for r, s in enumerate(seqs):
            arr[r, width - len(s) :] = np.frombuffer(array.array("q", s), dtype=np.int64)
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        ids = torch.from_numpy(arr)
        mask = torch.from_numpy((np.arange(width) >= (width - lengths)[:, None]).astype(np.int64))
        self.stats["padding_tokens"] += len(seqs) * width - sum(len(s) for s in seqs)
        self.stats["prompt_tokens"] += sum(len(s) for s in seqs)
        return ids.to(self.device), mask.to(self.device)

    def _all_ids(self) -> list[int]:
        """Every token id, the gate's answer where a prompt has no constraint (made once)."""
        n = len(self.tokenizer)
        if len(self._every_id) != n:
            self._every_id = list(range(n))
        return self._every_id

    def _gate(self, c: Constraint | None) -> RegexGate | None:
        """A token gate for small-alphabet regexes (the ids grammar); None otherwise."""
        if c is None or not c.regex or "[^" in c.regex or "." in c.regex.replace("\\.", ""):
            return None
        # One gate per grammar: a run asks the same (n, k) shape many times, and scanning the
        # vocabulary costs ~20 ms at 32k tokens.
        gate = self._gates.get(c.regex)
        if gate is None:
            alphabet = set(c.regex) - set("\\()|?:*+{}")
            if self._vocab is None:
                self._vocab = token_strings(self.tokenizer)
            cands = [i for i, s in enumerate(self._vocab) if s and set(s) <= alphabet]
            gate = RegexGate(c.regex, cands, self._vocab, int(self.tokenizer.eos_token_id))
            if len(self._gates) > 256:
                self._gates.clear()
            self._gates[c.regex] = gate
        return gate

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
        import torch

        constraints = constraints or [None] * len(prompts)
        gates = [self._gate(c) for c in constraints]
        encoded, batches = self._batches(prompts, max_tokens)
        results: list[Generation | None] = [None] * len(prompts)
        eos = self.tokenizer.eos_token_id
        stop = {eos, self.tokenizer.pad_token_id}
        t0 = time.perf_counter()

        def finish(batch: list[int], new_ids: Any, advance: Callable[[int], None]) -> None:
            for r, i in enumerate(batch):
                new = new_ids[r].tolist()
                n_out = next((j for j, t in enumerate(new) if t in stop), len(new))
                text = self.tokenizer.decode(new[:n_out], skip_special_tokens=True)
                gen = Generation(
                    text, len(encoded[i]), n_out + (n_out < len(new)), token_ids=new[:n_out]
                )
                self.stats["output_tokens"] += gen.output_tokens
                results[i] = gen
                if on_output is not None:
                    on_output(i, gen)
            advance(len(batch))

        try:
            with (
                progress_bar("LLM prompts", total=len(prompts), enabled=progress) as advance,
                Overlap() as overlap,
            ):
                for batch in batches:
                    ids, mask = self._pad([encoded[i] for i in batch])
                    width = ids.shape[1]
                    batch_gates = [gates[i] for i in batch]
                    allowed_fn = None
                    if any(g is not None for g in batch_gates):
                        vocab = self._all_ids()

                        def allowed_fn(
                            b: int, seq: Any, bg=batch_gates, w=width, v=vocab
                        ) -> list[int]:
                            gate = bg[b]
                            if gate is None:
                                return v
                            return gate.allowed_after(seq[w:].tolist(), self.tokenizer.decode)

                    kwargs: dict[str, Any] = dict(
                        input_ids=ids,
                        attention_mask=mask,
                        max_new_tokens=max_tokens,
                        pad_token_id=self.tokenizer.pad_token_id,
                        eos_token_id=eos,
                        prefix_allowed_tokens_fn=allowed_fn,
                    )
                    # Greedy search either way; sampling is the per-prompt Gumbel draw below.
                    kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
                    if temperature > 0:
                        seeds = [request_seed(seed, prompts[i]) for i in batch]
                        kwargs["logits_processor"] = [SeededSampling(seeds, temperature)]
                    with torch.inference_mode():
                        out = self.model.generate(**kwargs)
                    # Decoding, parsing and writing this batch's answers overlap the next batch.
                    overlap.submit(finish, batch, out[:, width:].cpu(), advance)
        finally:
            self.stats["engine_seconds"] += time.perf_counter() - t0
        return [r for r in results if r is not None]

    def score_labels(
        self,
        prompts: list[str],
        labels: list[list[str]],
        *,
        progress: bool = False,
        on_output: Callable[[int, list[float]], None] | None = None,
    ) -> list[list[float]]:
        import torch

        token_ids = [self.label_token_ids(labs) for labs in labels]
        encoded, batches = self._batches(prompts)
        results: list[list[float] | None] = [None] * len(prompts)
        t0 = time.perf_counter()
        try:
            with progress_bar("LLM scoring", total=len(prompts), enabled=progress) as advance:
                for batch in batches:
                    ids, mask = self._pad([encoded[i] for i in batch])
                    with torch.inference_mode():
                        pos = (mask.cumsum(-1) - 1).clamp(min=0)
                        logits = self.model(
                            input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1
                        ).logits
                    rows = _label_logprobs(logits[:, -1, :], [token_ids[i] for i in batch])
                    for i, scores in zip(batch, rows, strict=True):
                        results[i] = scores
                        if on_output is not None:
                            on_output(i, scores)
                    advance(len(batch))
        finally:
            self.stats["engine_seconds"] += time.perf_counter() - t0
        return [r for r in results if r is not None]

    def token_logprobs(
        self, sequences: list[list[int]], starts: list[int], *, progress: bool = False
    ) -> list[list[float]]:
        import torch

        check_windows(sequences, starts)
        lengths = [len(s) for s in sequences]
        size = self._batch_size(max(lengths, default=1), 1)
        results: list[list[float] | None] = [None] * len(sequences)
        decoder, head = self.model.get_decoder(), self.model.get_output_embeddings()
        t0 = time.perf_counter()
        try:
            with progress_bar("likelihood", total=len(sequences), enabled=progress) as advance:
                for batch in bucket_by_length(lengths, size):
                    ids, mask = self._pad([sequences[i] for i in batch])  # left padding
                    width = ids.shape[1]
                    with torch.inference_mode():
                        pos = (mask.cumsum(-1) - 1).clamp(min=0)
                        hidden = decoder(
                            input_ids=ids, attention_mask=mask, position_ids=pos
                        ).last_hidden_state
                        for r, i in enumerate(batch):
                            lead = width - lengths[i]  # padding before the text
                            rows = hidden[r, lead + starts[i] - 1 : width - 1]
                            target = ids[r, lead + starts[i] :]
                            results[i] = self._head_logprobs(head, rows, target)
                    advance(len(batch))
        finally:
            self.stats["engine_seconds"] += time.perf_counter() - t0
        return [r for r in results if r is not None]

    def _head_logprobs(self, head: Any, rows: Any, target: Any) -> list[float]:
        """log p(target[j]) from the final hidden states ``rows``, the head a chunk at a time,
        with the logit scaling some model classes apply after the head (Gemma 2's soft cap,
        Cohere's and Granite's scales)."""
        import torch

        cfg = self.model.config
        cap = getattr(cfg, "final_logit_softcapping", None)
        scale = getattr(cfg, "logit_scale", None)
        divide = getattr(cfg, "logits_scaling", None)
        out: list[float] = []
        for c in range(0, rows.shape[0], HEAD_CHUNK):
            logits = head(rows[c : c + HEAD_CHUNK]).float()
            if scale:
                logits = logits * scale
            if divide:
                logits = logits / divide
            if cap:
                logits = torch.tanh(logits / cap) * cap
            logp = torch.log_softmax(logits, dim=-1)
            out.extend(logp.gather(1, target[c : c + HEAD_CHUNK, None]).squeeze(1).tolist())
        return out

    def ray_summary(self) -> RaySummary | None:
        return None  # runs in this process

    def close(self) -> None:
        if getattr(self, "model", None) is None:
            return
        self.model = None
        gc.collect()
        hardware.empty_cache()


def _torch_dtype(name: str, device: str) -> Any:
    import torch

    # bfloat16 on a CPU too: half the memory of float32, and selection answers are short
    return getattr(torch, hardware.resolve_dtype(name, device, cpu_auto="bfloat16"))
