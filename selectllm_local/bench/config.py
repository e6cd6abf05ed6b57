"""Benchmark configuration: settings, presets and the fixed keys of the results JSON.

Kept apart from the measuring code (``bench/run.py``) so the CLI and scripts can parse options and
validate them, with messages naming the flag, before anything heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selectllm_local.config.vocab import BackendName, Dtype, Mode
from selectllm_local.errors import UserError

SCHEMA = "selectllm-bench/1"
# Fixed keys of the JSON and of each row of "results" (tests check them; add, never rename).
TOP_KEYS = (
    "schema", "created", "machine", "environment", "model", "workload", "peak", "results", "stages",
)  # fmt: skip
RESULT_KEYS = (
    "label", "backend", "batch", "prefix_caching", "constrained", "mode", "reasons",
    "startup_seconds", "prompts", "prompt_tokens", "cached_prompt_tokens", "output_tokens",
    "padding_tokens", "padding_fraction", "engine_seconds", "render_seconds", "select_seconds",
    "ours_seconds", "seconds_all", "prompts_per_s", "prompt_tokens_per_s", "output_tokens_per_s",
    "prefill_utilization", "prefill_utilization_datasheet", "pipeline_prompt_tokens_per_s",
    "pipeline_utilization", "peak_rss_bytes", "peak_gpu_bytes", "fallbacks", "valid_first_try",
)  # fmt: skip


@dataclass(frozen=True)
class BenchSetting:
    """One measured configuration. ``batch`` is max_num_seqs (vLLM) or batch size (transformers)."""

    backend: BackendName = "vllm"
    batch: int | None = None
    prefix_caching: bool = True
    constrained: bool = True
    mode: Mode = "generate"
    reasons: bool = False

    @property
    def label(self) -> str:
        parts: list[str] = [self.backend]
        if self.batch:
            parts.append(f"b{self.batch}")
        parts.append(
            "logprobs" if self.mode == "logprobs" else "reasons" if self.reasons else "ids"
        )
        if self.mode != "logprobs":
            parts.append("constrained" if self.constrained else "free")
        if self.backend == "vllm" and not self.prefix_caching:
            parts.append("no-prefix-cache")
        return " ".join(parts)

    @property
    def engine_key(self) -> tuple[str, int | None, bool]:
        """Settings with the same key share one engine."""
        return (self.backend, self.batch, self.prefix_caching)


def parse_setting(text: str) -> BenchSetting:
    """``vllm``, ``vllm:free``, ``transformers:b8``, ``vllm:logprobs:nocache``, ``vllm:reasons``."""
    parts = [p.strip().lower() for p in text.split(":") if p.strip()]
    if not parts or parts[0] not in ("vllm", "transformers", "hf"):
        raise UserError(
            f"--setting {text!r}: start with a backend (vllm or transformers), then options "
            "from free, logprobs, reasons, nocache, bN (e.g. vllm:free, transformers:b8)."
        )
    kw: dict[str, Any] = {"backend": "transformers" if parts[0] == "hf" else parts[0]}
    for p in parts[1:]:
        if p == "free":
            kw["constrained"] = False
        elif p == "logprobs":
            kw["mode"] = "logprobs"
        elif p == "reasons":
            kw["reasons"] = True
        elif p == "nocache":
            kw["prefix_caching"] = False
        elif p.startswith("b") and p[1:].isdigit():
            kw["batch"] = int(p[1:])
        else:
            raise UserError(
                f"--setting {text!r}: unknown option {p!r} (free, logprobs, reasons, nocache, bN)."
            )
    return BenchSetting(**kw)


@dataclass
class BenchConfig:
    """What to benchmark. A named ``shape`` builds (once, cached) a random-weight model."""

    pool: Path | None = None
    shape: str = "qwen2.5-0.5b"
    model: str | None = None  # a local model folder instead of a shape
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "selectllm" / "models")
    dtype: Dtype = "auto"  # engine + matmul dtype; auto: bf16 where native, else float32
    subsets: int = 64
    candidates: int = 14
    picks: int = 1
    max_candidate_tokens: int = 40
    max_tokens: int | None = 8  # generative ids: answer length cap (None: selection's default)
    warmup: int = 1
    warmup_subsets: int = 4  # a warm-up compiles and fills caches; it need not be full size
    repeats: int = 3
    max_model_len: int = 4096
    tokenizer: str = "toy"  # shapes only: "toy" (tinymodel's) | "pool" (BPE trained on the pool)
    stages: bool = False  # also run one full pipeline.select_run and report seconds per stage
    stages_dir: Path | None = None  # run dir of that select (kept; planned stages reused)
    settings: list[BenchSetting] = field(default_factory=lambda: [BenchSetting()])
    machine: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.subsets < 1 or self.candidates < 2 or not 1 <= self.picks < self.candidates:
            raise UserError(
                "--subsets must be >= 1, --candidates >= 2 and 1 <= --picks < --candidates "
                f"(got {self.subsets}, {self.candidates}, {self.picks})."
            )
        if self.tokenizer not in ("toy", "pool"):
            raise UserError(f"--tokenizer must be toy or pool (got {self.tokenizer!r}).")
        if self.repeats < 1 or self.warmup < 0:
            raise UserError(
                f"--repeats must be >= 1 and --warmup >= 0 (got {self.repeats}, {self.warmup})."
            )


PRESETS: dict[str, dict[str, Any]] = {
    # CI: a 2-layer model, a handful of prompts, every code path (both backends, all modes).
    "tiny": dict(
        shape="tiny-qwen2", subsets=6, candidates=6, max_candidate_tokens=24, warmup=1, repeats=2,
        stages=True,
        settings=[BenchSetting("vllm"), BenchSetting("vllm", constrained=False),
                  BenchSetting("vllm", mode="logprobs"), BenchSetting("transformers", batch=8)],
    ),
    # The CPU workload: Qwen2.5-0.5B shape, 64 Dolly subsets of 14 candidates.
    "cpu": dict(
        shape="qwen2.5-0.5b", subsets=64, candidates=14, warmup=1, repeats=2, tokenizer="pool",
        settings=[BenchSetting("vllm"), BenchSetting("vllm", constrained=False),
                  BenchSetting("vllm", mode="logprobs"), BenchSetting("vllm", reasons=True),
                  BenchSetting("vllm", prefix_caching=False), BenchSetting("transformers", batch=8)],
    ),
    # Issue 10's GPU workload, one command (< 5 min on one H100/H200 with the model build):
    # Llama-3-8B shape, 96 Dolly prompts of 14 candidates, batch 64, generated ids and logprobs,
    # on vLLM when installed (else transformers), plus one real `select` split into stages.
    "gpu": dict(
        shape="llama-3-8b", subsets=96, candidates=14, warmup=1, repeats=2, stages=True,
        settings=None,  # resolved by gpu_settings() when the preset is used
    ),
}  # fmt: skip


def gpu_settings(batch: int = 64) -> list[BenchSetting]:
    """The gpu preset's settings on the engine this install has (vLLM, else transformers)."""
    from selectllm_local.backends import resolve_backend_name

    engine = resolve_backend_name("auto")
    return [BenchSetting(engine, batch=batch), BenchSetting(engine, batch=batch, mode="logprobs")]


def config_from_preset(name: str, **overrides: Any) -> BenchConfig:
    if name not in PRESETS:
        raise UserError(f"--preset {name!r} is not known. Presets: {', '.join(PRESETS)}.")
    kw = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    if kw.get("settings") is None:
        kw["settings"] = gpu_settings()
    return BenchConfig(**kw)
