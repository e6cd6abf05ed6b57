"""Inputs of the experiment estimate (``estimate.py``): measured rates, model sizes, and the
conversion of work (tokens, FLOPs, decode steps) into seconds on this CPU and on one GPU.

Measured rates come from ``benchmarks/bench_costs.py`` (SmolLM2-135M on this machine) and are
scaled by model size: rate x measured non-embedding params / params (first-order: compute
scales with parameters; memory, threads and engine overheads do not). GPU seconds use the
datasheet (``hardware.GPUS``): FLOPs / (dense bf16 peak x utilisation) for compute-bound work,
steps x bf16 weight bytes / memory bandwidth for decode. They are estimates, not measurements.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectllm_local.errors import UserError

DEFAULT_RATES = Path("benchmarks/results/costs_cpu2_smollm2.json")
RATE_KEYS = (
    "non_embedding_params",
    "selection_vllm_prompt_tokens_per_s",
    "selection_vllm_logprobs_prompt_tokens_per_s",
    "selection_transformers_prompt_tokens_per_s",
    "finetune_tokens_per_s",
    "evaluate_output_tokens_per_s",
    "evaluate_answer_fill",
)
GPU_LABEL = "estimate, not measured"
GPU_MEASURED_LABEL = "scaled from rates measured on a GPU"
# What a GPU rates file may hold (bench_costs.py --shape ... --stages finetune evaluate on the
# node): each present key replaces the datasheet for its stage.
GPU_RATE_KEYS = (
    "finetune_tokens_per_s",
    "evaluate_answers_per_s",
    "selection_transformers_prompt_tokens_per_s",
)
CPU_LABEL = "scaled from measured SmolLM2-135M rates"


@dataclass
class ModelSize:
    """A model's parameters and where the figure came from."""

    spec: str
    non_embedding_params: float
    total_params: float
    source: str
    tokenizer: str | None  # a local folder to count tokens with, if the model is here


def model_size(spec: str) -> ModelSize:
    """Size of a model folder (config.json), a ``tiny:`` shape, or a folder named by its size."""
    from selectllm_local.bench.dry import _total_params
    from selectllm_local.bench.model import model_shape
    from selectllm_local.models import random_weights as tinymodel

    path, name = Path(spec), Path(spec).name.lower()
    shape, source, tokenizer = None, "", None
    if (path / "config.json").is_file():
        shape, source, tokenizer = model_shape(path), "config.json", str(path)
    elif spec.startswith("tiny:"):
        shape, source = dict(tinymodel.SHAPES[spec[5:]]), f"shape {spec[5:]}"
    else:
        known = [s for s in tinymodel.SHAPES if s in name]
        if known:
            shape, source = dict(tinymodel.SHAPES[known[0]]), f"shape {known[0]} (from the name)"
    if shape is not None:
        non = tinymodel.non_embedding_params(shape)
        return ModelSize(spec, non, _total_params(shape, non), source, tokenizer)
    m = re.search(r"(?<![\d.])(\d+(?:\.\d+)?)([bm])(?![a-z])", name)
    if not m:
        raise UserError(
            f"Model {spec} is not here and its name gives no size: download it, or name the folder "
            "with its size (e.g. Llama-2-7b-hf) for the dry run."
        )
    n = float(m.group(1)) * (1e9 if m.group(2) == "b" else 1e6)
    return ModelSize(spec, n, n, f"'{m.group(0)}' in the folder name", None)


def load_rates(path: Path | str | None) -> tuple[dict[str, float] | None, str]:
    """The measured rates (``rates`` block of bench_costs.py's JSON) and where they came from.

    No ``path``: the committed file when present (run from the repository), else none.
    """
    if path is None:
        if not DEFAULT_RATES.is_file():
            return None, ""
        path = DEFAULT_RATES
    path = Path(path)
    doc = _read_json(path, "--rates")
    rates = doc.get("rates", doc) if isinstance(doc, dict) else None
    if not isinstance(rates, dict):
        raise UserError(f"--rates {path}: expected a JSON object with a 'rates' block.")
    bad = [k for k in RATE_KEYS if not _positive(rates, k)]
    if bad:
        raise UserError(
            f"--rates {path}: missing or non-positive key(s) {', '.join(bad)} in its rates block. "
            "Measure them with python benchmarks/bench_costs.py."
        )
    load = doc.get("load", {}) if isinstance(doc, dict) else {}
    where = f"{path}, {doc.get('machine') or 'unnamed machine'}"
    if load.get("loadavg_start"):
        where += f", load average {load['loadavg_start'][0]:g} on {load.get('cpus')} CPUs"
    return {k: float(rates[k]) for k in RATE_KEYS}, where


def load_gpu_rates(path: Path | str | None) -> tuple[dict[str, float] | None, str]:
    """Rates measured on a GPU node (``bench_costs.py --shape ... --config ...`` there) and
    where they came from; each stage without its key keeps the datasheet estimate."""
    if path is None:
        return None, ""
    path = Path(path)
    doc = _read_json(path, "--gpu-rates")
    rates = doc.get("rates") if isinstance(doc, dict) else None
    if not isinstance(rates, dict) or not _positive(rates, "non_embedding_params"):
        raise UserError(
            f"--gpu-rates {path}: expected a 'rates' block with non_embedding_params "
            "(the file benchmarks/bench_costs.py writes)."
        )
    got = {k: float(rates[k]) for k in GPU_RATE_KEYS if _positive(rates, k)}
    if "evaluate_answers_per_s" in got:
        need = ("evaluate_batch_size", "evaluate_max_new_tokens")
        if not all(_positive(rates, k) for k in need):
            raise UserError(
                f"--gpu-rates {path}: evaluate_answers_per_s needs {' and '.join(need)} beside "
                "it (measure again with this version of benchmarks/bench_costs.py)."
            )
        got.update({k: float(rates[k]) for k in need})
    if not got:
        raise UserError(
            f"--gpu-rates {path}: no GPU rate in it (one of {', '.join(GPU_RATE_KEYS)})."
        )
    got["non_embedding_params"] = float(rates["non_embedding_params"])
    env = doc.get("environment") or {}
    model = (doc.get("model") or {}).get("name", "")
    where = f"{path}, {doc.get('machine') or env.get('gpu_name') or 'unnamed GPU'}"
    return got, where + (f", {model}" if model else "")


def _read_json(path: Path, flag: str) -> Any:
    if not path.is_file():
        raise UserError(
            f"{flag} {path}: no such file. Give the JSON file benchmarks/bench_costs.py writes."
        )
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{flag} {path}: cannot read it as JSON ({exc}). Give the file "
            "benchmarks/bench_costs.py writes."
        ) from None


def _positive(rates: dict[str, object], key: str) -> bool:
    v = rates.get(key)
    return isinstance(v, int | float) and not isinstance(v, bool) and v > 0


class Costs:
    """Turns work (tokens, FLOPs, decode steps) into seconds on the two columns."""

    def __init__(
        self,
        rates: dict[str, float] | None,
        gpu: str,
        utilization: float,
        gpu_rates: dict[str, float] | None = None,
    ) -> None:
        from selectllm_local import hardware

        if not 0 < utilization <= 1:
            raise UserError(f"--utilization must be in (0, 1] (got {utilization}).")
        self.rates, self.spec, self.utilization = rates, hardware.gpu_spec(gpu), utilization
        self.gpu_rates = gpu_rates or {}

    def gpu_measured(self, key: str, tokens: float, params: float) -> float | None:
        """Seconds for ``tokens`` at the GPU-measured ``key`` rate scaled to ``params``; None
        when the GPU rates file has no such rate (the caller keeps the datasheet)."""
        if key not in self.gpu_rates:
            return None
        return tokens / (self.gpu_rates[key] * self.gpu_rates["non_embedding_params"] / params)

    def gpu_answers(self, answers: int, batch: int, new_tokens: int, params: float) -> float | None:
        """Seconds for greedy answers on the transformers backend from the measured decode step:
        the measured run took ceil(answers / batch) x max_new_tokens steps; steps scale with the
        batches and the answer cap, step time with parameters (a step reads every weight)."""
        r = self.gpu_rates
        if "evaluate_answers_per_s" not in r:
            return None
        b, m = r["evaluate_batch_size"], r["evaluate_max_new_tokens"]
        step = b / (r["evaluate_answers_per_s"] * m)  # seconds per step, batches always full
        return math.ceil(answers / batch) * new_tokens * step * params / r["non_embedding_params"]

    def cpu(self, key: str, tokens: float, params: float) -> float | None:
        """Seconds for ``tokens`` at the measured ``key`` rate scaled to ``params``."""
        if self.rates is None:
            return None
        return tokens / (self.rates[key] * self.rates["non_embedding_params"] / params)

    def compute(self, flops: float) -> float:
        return flops / (self.spec.bf16_dense_tflops * 1e12 * self.utilization)

    def decode(self, steps: float, total_params: float) -> float:
        return steps * total_params * 2 / (self.spec.memory_bandwidth_gbs * 1e9)

    @property
    def fill(self) -> float:
        return self.rates["evaluate_answer_fill"] if self.rates else 1.0
