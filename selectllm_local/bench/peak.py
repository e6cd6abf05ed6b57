"""The ceiling the benchmark measures against: this machine's matmul peak, and each row's share.

Prefill is a large matmul per layer, so selection is compute-bound and its ceiling is the matmul
rate: utilisation = 2 x non-embedding parameters x prompt tokens / seconds / peak FLOP/s. The peak
is measured in the benchmark's own process (``hardware.measure_matmul``), before each setting and
at the end, and the best sample counts; on a known GPU the datasheet figure is given beside it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from selectllm_local.config.vocab import Dtype

if TYPE_CHECKING:
    from selectllm_local.hardware import MatmulResult


@dataclass
class Peak:
    """The matmul peak, sampled before, between settings and after: the best sample counts (on a
    shared machine a peak measured during someone else's job would flatter the utilisation)."""

    device: str
    dtype: Dtype
    samples: list[float] = dataclasses.field(default_factory=list)
    first: MatmulResult | None = None
    last: MatmulResult | None = None

    def sample(self) -> MatmulResult:
        from selectllm_local import hardware

        result = hardware.measure_matmul(self.dtype, self.device)
        self.samples.append(result.best_flops)
        self.first = result if self.first is None else self.first
        self.last = result
        return result

    def block(self) -> dict[str, Any]:
        """The JSON's ``peak`` block (datasheet figures on a known GPU)."""
        from selectllm_local import hardware

        if self.first is None or self.last is None:
            raise ValueError("Peak.block() before any sample()")
        spec = hardware.gpu_datasheet() if self.device == "cuda" else None
        return {
            "dtype": self.dtype, "device": self.device, "flops": max(self.samples),
            "before": dataclasses.asdict(self.first), "after": dataclasses.asdict(self.last),
            "samples": self.samples,
            "datasheet_flops": spec.bf16_dense_tflops * 1e12 if spec else None,
            "gpu": dataclasses.asdict(spec) if spec else None,
        }  # fmt: skip


def add_utilization(
    rows: list[dict[str, Any]], n_params: int, peak: float, datasheet: float | None
) -> None:
    """Each row's share of the measured peak (and of the datasheet's, on a known GPU)."""
    for row in rows:
        flops = 2.0 * n_params * row["prompt_tokens"]
        row["prefill_utilization"] = flops / row["engine_seconds"] / peak
        row["pipeline_utilization"] = flops / row["select_seconds"] / peak
        row["prefill_utilization_datasheet"] = (
            flops / row["engine_seconds"] / datasheet if datasheet else None
        )
