"""Hardware facts, in one place: device, CUDA, GPU datasheet, dtype, matmul peak, memory peaks.

Why one module: every stage that runs a model (embedding, backends, evaluation, fine-tuning,
baselines, the benchmark) has to answer "is there a GPU, and which dtype runs fast here?". Written
in each of them, the answers drifted (one checked CUDA, another also wanted vLLM, a third passed a
device string through). Now they all ask ``cuda_available``, ``default_device`` and
``resolve_dtype`` here; ``torch`` is imported lazily so importing this module stays cheap.

A throughput number means little until it is compared with what the hardware can do. The
benchmark therefore measures, in the same process and dtype as the engine, how fast a plain
matrix multiply runs (``matmul_peak``), and reports prefill utilisation against it. On a GPU it
also reports utilisation against the datasheet's dense peak (``GPUS``), the number people quote.

The micro-benchmark uses ``torch.nn.functional.linear`` (weights stored ``[out, in]``) because that
is the call the engines make for every projection; on CPUs without native bf16 (AVX2-only x86)
``torch.matmul`` on bf16 tensors takes a far slower generic path than ``linear`` does, so timing
``matmul`` would understate the peak the engines can actually reach.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from selectllm_local.config.vocab import Dtype

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GPUSpec:
    """Datasheet figures: dense (no sparsity) bf16 tensor FLOP/s and memory bandwidth."""

    name: str
    bf16_dense_tflops: float
    memory_bandwidth_gbs: float
    memory_gib: float


# Dense bf16 tensor-core peaks from the vendors' datasheets (the sparse figures are 2x these).
GPUS: dict[str, GPUSpec] = {
    "h100": GPUSpec("NVIDIA H100 SXM", 989.0, 3350.0, 80),
    "h100-pcie": GPUSpec("NVIDIA H100 PCIe", 756.0, 2000.0, 80),
    "h200": GPUSpec("NVIDIA H200 SXM", 989.0, 4800.0, 141),
    "b200": GPUSpec("NVIDIA B200", 2250.0, 8000.0, 180),
    "a100": GPUSpec("NVIDIA A100 SXM 80GB", 312.0, 2039.0, 80),
    "l40s": GPUSpec("NVIDIA L40S", 362.0, 864.0, 48),
    "l4": GPUSpec("NVIDIA L4", 121.0, 300.0, 24),
}


def gpu_spec(name: str) -> GPUSpec:
    """Look up a GPU by key (``h100``) or by a device name as CUDA reports it."""
    from selectllm_local.errors import UserError

    key = name.lower().strip()
    if key in GPUS:
        return GPUS[key]
    found = match_gpu(name)
    if found is None:
        raise UserError(
            f"--gpu {name!r} is not in the datasheet table. Known GPUs: {', '.join(GPUS)}."
        )
    return found


def match_gpu(device_name: str) -> GPUSpec | None:
    """The datasheet entry for a CUDA device name such as 'NVIDIA H100 80GB HBM3', if known."""
    low = device_name.lower()
    order = ["h200", "b200", "a100", "l40s", "l4"]
    for key in order:
        if key in low:
            return GPUS[key]
    if "h100" in low:
        return GPUS["h100-pcie" if "pcie" in low else "h100"]
    return None


@dataclass
class MatmulResult:
    """One matmul micro-benchmark: best and median FLOP/s over ``repeats`` timed runs."""

    dtype: str
    device: str
    size: int
    repeats: int
    best_flops: float
    median_flops: float


def cuda_available() -> bool:
    """True when torch sees a usable CUDA device (False when torch itself is missing)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency; kept for cheap callers
        return False
    return bool(torch.cuda.is_available())


def default_device(device: str | None = None) -> str:
    """``device`` when given, else ``cuda`` if a GPU is usable, else ``cpu``."""
    if device:
        return device
    return "cuda" if cuda_available() else "cpu"


def gpu_name() -> str | None:
    """CUDA's name for device 0 (e.g. 'NVIDIA H100 80GB HBM3'), or None without a GPU."""
    if not cuda_available():
        return None
    import torch

    return str(torch.cuda.get_device_name(0))


def gpu_datasheet() -> GPUSpec | None:
    """The datasheet entry of device 0, when there is a GPU and the table knows it."""
    name = gpu_name()
    return match_gpu(name) if name else None


def resolve_dtype(dtype: str, device: str | None = None, *, cpu_auto: str | None = None) -> Dtype:
    """``auto`` -> the dtype that runs fast here; any other name is returned unchanged.

    On a GPU: bfloat16 where the GPU supports it, else float16. On a CPU: ``cpu_auto`` when the
    caller has its own reason (training and evaluation want float32's exact sums; the
    transformers selection backend halves its memory in bfloat16), else bfloat16 where the
    hardware has native bf16 GEMMs and float32 otherwise: AVX2-only x86 CPUs (no AVX-512 BF16, no
    AMX) run bf16 GEMMs an order of magnitude slower than float32, so a benchmark there in bf16
    would measure an emulation path, not the machine.
    """
    if dtype != "auto":
        return cast(Dtype, dtype)
    device = default_device(device)
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if cpu_auto is not None:
        return cast(Dtype, cpu_auto)
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "bfloat16"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def engine_dtype(dtype: str, device: str | None = None) -> Dtype:
    """The dtype a selection engine loads with: ``auto`` on a CPU -> :func:`resolve_dtype`'s pick
    (float32 unless the CPU has native bf16 GEMMs; bf16 elsewhere is an emulation several times
    slower); on a GPU ``auto`` stays, so the engine picks from the model's config."""
    if dtype != "auto" or default_device(device).startswith("cuda"):
        return cast(Dtype, dtype)
    resolved = resolve_dtype(dtype, device)
    log.info("--dtype auto on this CPU: %s", resolved)
    return resolved


def cpu_has_native_bf16() -> bool:
    """Whether this x86 CPU has bf16 GEMM instructions (AVX-512 BF16 or AMX-BF16).

    Asks torch first; where its private probes are missing, reads the CPU flags from
    ``/proc/cpuinfo``.
    """
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    found = [getattr(torch.cpu, name, None) for name in probes]
    if any(callable(f) for f in found):
        return any(bool(f()) for f in found if callable(f))
    try:  # pragma: no cover - older torch
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # pragma: no cover - not Linux
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags  # pragma: no cover


def empty_cache() -> None:
    """Return cached GPU memory to the driver after an engine is freed (no-op on CPU)."""
    if cuda_available():
        import torch

        torch.cuda.empty_cache()


def measure_matmul(
    dtype: str = "bfloat16",
    device: str | None = None,
    size: int | None = None,
    repeats: int = 5,
) -> MatmulResult:
    """Time ``linear(x[size, size], w[size, size])`` ``repeats`` times after two warm-ups."""
    import torch
    import torch.nn.functional as F

    device = default_device(device)
    size = size or (8192 if device.startswith("cuda") else 1536)
    tdtype = getattr(torch, dtype)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(size, size, generator=gen).to(device=device, dtype=tdtype)
    w = torch.randn(size, size, generator=gen).to(device=device, dtype=tdtype)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.inference_mode():
        for _ in range(2):
            F.linear(x, w)
        sync()
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            F.linear(x, w)
            sync()
            times.append(time.perf_counter() - t0)
    flops = 2.0 * size**3
    return MatmulResult(
        dtype=dtype,
        device=device,
        size=size,
        repeats=len(times),
        best_flops=flops / min(times),
        median_flops=flops / statistics.median(times),
    )


def matmul_peak(
    dtype: str = "bfloat16",
    device: str | None = None,
    size: int | None = None,
    repeats: int = 5,
) -> float:
    """Measured matmul FLOP/s of this machine in ``dtype`` (best of ``repeats``)."""
    return measure_matmul(dtype, device, size, repeats).best_flops


# -- memory ------------------------------------------------------------------------------------
class PeakMemory:
    """Peak memory over a block: RSS high-water mark on CPU, allocator peak on GPU.

    On Linux the process's RSS high-water mark (``VmHWM``) is reset at the start by writing ``5``
    to ``/proc/self/clear_refs``, so each block reports its own peak, not the process's.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.rss_peak_bytes: int | None = None
        self.gpu_peak_bytes: int | None = None

    def __enter__(self) -> PeakMemory:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            log.debug("cannot reset the RSS high-water mark; peak covers the whole process")
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc: object) -> None:
        self.read()

    def read(self) -> None:
        """Update the peaks seen so far (callable inside the block)."""
        self.rss_peak_bytes = rss_high_water()
        if self.device.startswith("cuda"):
            import torch

            self.gpu_peak_bytes = int(torch.cuda.max_memory_allocated())


def rss_high_water() -> int | None:
    """Peak resident set size of this process in bytes (Linux ``VmHWM``; else ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except (ImportError, OSError):  # pragma: no cover - non-Unix
        return None


# -- environment ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first CPU's fields in /proc/cpuinfo, read once (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():  # the end of the first CPU's block
                break
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_native_bf16() -> bool | None:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16): two CPUs both named
    "Xeon" or "EPYC" can differ by twice in a benchmark's CPU time. None where it cannot be read."""
    flags = _cpuinfo().get("flags")
    return None if flags is None else bool(set(flags.split()) & {"avx512_bf16", "amx_bf16"})


def machine_facts() -> dict[str, Any]:
    """CPU, threads, load and GPU facts for an output's environment block."""
    import torch

    name = gpu_name()
    spec = match_gpu(name) if name else None
    facts: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_native_bf16": cpu_native_bf16(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpu_name": name,
        "cuda": torch.version.cuda,
    }
    if name is not None:
        facts["gpu_datasheet"] = asdict(spec) if spec else None
    return facts
