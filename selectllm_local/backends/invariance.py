"""``--batch-invariant``: vLLM's batch-invariant kernels, where the hardware has them.

vLLM 0.32 reads ``VLLM_BATCH_INVARIANT=1`` when its GPU worker starts
(``vllm.model_executor.determinism.batch_invariant.init_batch_invariance``): matmuls without
split-K (cuBLAS workspace settings on Hopper and Blackwell, Triton persistent kernels on Ampere and
ROCm), fixed-order softmax, mean and RMSNorm, one-stage all-reduce. A prompt's logits are then the
same bits whatever its batch. vLLM documents it (beta) for NVIDIA GPUs of compute capability 8.0
or higher, AMD Instinct gfx90a/gfx942/gfx950 and Intel XPUs. Its CPU worker never reads the
variable, and the transformers backend has no such kernels: there the flag would change nothing,
so asking for it exits 2 (a run that silently lacks the guarantee it asked for is worse than
none). Without the flag, logprob-mode picks are still batch-independent up to near-ties
(docs/DIAGNOSTICS.md, "The same picks whatever the batching").
"""

from __future__ import annotations

import logging
import os
import sys

from selectllm_local.errors import UserError

log = logging.getLogger(__name__)

ENV = "VLLM_BATCH_INVARIANT"
ROCM_ARCHS = ("gfx90a", "gfx942", "gfx950")
_WITHOUT = (
    "Drop --batch-invariant: logprob-mode picks are batch-independent up to near-ties without "
    "it (docs/DIAGNOSTICS.md, 'The same picks whatever the batching')."
)


def unsupported(backend: str) -> str | None:
    """Why ``--batch-invariant`` cannot hold for ``backend`` on this machine (None: it can)."""
    if backend != "vllm":
        return (
            f"--batch-invariant turns on vLLM's batch-invariant kernels; the {backend} backend "
            "has none. Use --backend vllm on a supported GPU."
        )
    import torch

    if getattr(torch, "xpu", None) is not None and torch.xpu.is_available():
        return None
    if not torch.cuda.is_available():
        return (
            "--batch-invariant needs a GPU: vLLM 0.32 has batch-invariant kernels for NVIDIA "
            "GPUs of compute capability 8.0 or higher, AMD Instinct (gfx90a, gfx942, gfx950) "
            "and Intel XPUs, and its CPU build ignores VLLM_BATCH_INVARIANT. This machine has "
            "no GPU."
        )
    name = torch.cuda.get_device_name(0)
    if getattr(torch.version, "hip", None):
        arch = str(getattr(torch.cuda.get_device_properties(0), "gcnArchName", ""))
        if arch.split(":")[0] in ROCM_ARCHS:
            return None
        return (
            f"--batch-invariant: vLLM 0.32 supports AMD {', '.join(ROCM_ARCHS)}; {name} is {arch}."
        )
    major, minor = torch.cuda.get_device_capability(0)
    if (major, minor) >= (8, 0):
        return None
    return (
        f"--batch-invariant needs an NVIDIA GPU of compute capability 8.0 or higher; {name} has "
        f"{major}.{minor}."
    )


def check(backend: str) -> None:
    """UserError (exit 2) where ``--batch-invariant`` cannot hold (``unsupported``); ``select``
    calls it before its first stage, so the error comes before the embedding, not after."""
    if backend == "fake":
        return
    why = unsupported(backend)
    if why:
        raise UserError(f"{why} {_WITHOUT}")


def enable(backend: str) -> None:
    """Set ``VLLM_BATCH_INVARIANT=1`` for the engine about to start (after ``check``). Called by
    ``load_backend`` on the node that runs the engine (a Ray actor's own node under ``--ray``)."""
    check(backend)
    envs = sys.modules.get("vllm.envs")
    cached = getattr(envs, "_is_envs_cache_enabled", lambda: False)() if envs else False
    if cached and os.environ.get(ENV) != "1":
        log.warning(
            "vLLM already started an engine in this process and cached its settings: "
            "--batch-invariant takes effect only in a new process"
        )
    os.environ[ENV] = "1"
    log.info("batch-invariant kernels on (%s=1)", ENV)
