"""The selection benchmark's settings, each declared once: ``BenchConfig`` and its presets.

``BenchConfig`` is a section like ``PlanConfig``: its fields (name, type, default, the docstring
under each as the help of its flag) are the knobs of ``selectllm bench`` and of
``benchmarks/bench_select.py``, both built from them (``BenchCommand`` nests it). Its defaults are
the ``tiny`` workload; ``PRESETS`` name the other workloads as the settings they change, spelled as
their flags are, and a preset sits under the config file and the flags (defaults < preset < file <
flags). Kept in ``config/`` with no import of the measuring code, so options parse and validate
before anything heavy loads; ``bench/`` measures what this describes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from selectllm_local.config.base import Section, as_path
from selectllm_local.config.vocab import BackendName, Dtype, Mode
from selectllm_local.errors import UserError

BenchTokenizer = Literal["toy", "pool"]
"""Tokenizer of a random-weight shape: the toy one it is built with, or one trained on the pool."""


@dataclass(frozen=True)
class BenchSetting:
    """One measured configuration. ``batch`` is max_num_seqs (vLLM) or batch size (transformers);
    ``backend="auto"`` is the engine this install has, resolved before measuring."""

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
    def spelling(self) -> str:
        """The ``--setting`` value that means this setting (``parse_setting``'s inverse)."""
        parts = [self.backend, *([f"b{self.batch}"] if self.batch else [])]
        parts += ["logprobs"] if self.mode == "logprobs" else []
        parts += ["reasons"] if self.reasons else []
        parts += [] if self.constrained else ["free"]
        parts += [] if self.prefix_caching else ["nocache"]
        return ":".join(parts)

    @property
    def engine_key(self) -> tuple[str, int | None, bool]:
        """Settings with the same key share one engine."""
        return (self.backend, self.batch, self.prefix_caching)


SETTING_OPTIONS = "free, logprobs, reasons, nocache, bN"


def parse_setting(text: str) -> BenchSetting:
    """``vllm``, ``vllm:free``, ``transformers:b8``, ``vllm:logprobs:nocache``, ``auto:b64``."""
    parts = [p.strip().lower() for p in str(text).split(":") if p.strip()]
    if not parts or parts[0] not in ("vllm", "transformers", "hf", "auto"):
        raise UserError(
            f"--setting {text!r}: start with a backend (vllm, transformers or auto), then options "
            f"from {SETTING_OPTIONS} (e.g. vllm:free, transformers:b8)."
        )
    kw: dict[str, Any] = {"backend": "transformers" if parts[0] == "hf" else parts[0]}
    words = {"free": ("constrained", False), "logprobs": ("mode", "logprobs"),
             "reasons": ("reasons", True), "nocache": ("prefix_caching", False)}  # fmt: skip
    for p in parts[1:]:
        if p in words:
            kw[words[p][0]] = words[p][1]
        elif p.startswith("b") and p[1:].isdigit() and int(p[1:]) > 0:
            kw["batch"] = int(p[1:])
        else:
            raise UserError(f"--setting {text!r}: unknown option {p!r} ({SETTING_OPTIONS}).")
    return BenchSetting(**kw)


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "selectllm" / "models"


@dataclass
class BenchConfig(Section):
    """What to benchmark: the defaults are the ``tiny`` workload (see ``PRESETS``)."""

    SECTION = "bench"

    pool: Path | None = None
    """Pool whose rows make the prompts (Dolly, Alpaca, ...)."""
    shape: str = "tiny-qwen2"
    """Random-weight model shape, built once and cached (see random-model)."""
    model: str | None = None
    """A local model folder, .gguf file or known name instead of a shape."""
    cache_dir: Path = field(default_factory=_default_cache_dir)
    """Where random-weight models of a shape are built and cached [default:
    ~/.cache/selectllm/models]."""
    tokenizer: BenchTokenizer = "toy"
    """Shapes only: toy (the random model's own) or pool (a BPE trained on the pool, so prompt
    lengths match a trained model's)."""
    dtype: Dtype = "auto"
    """Engine and matmul dtype: auto (bfloat16 where native, else float32), bfloat16, float16,
    float32."""
    subsets: int = 6
    """Prompts per timed repeat."""
    candidates: int = 6
    """Candidates per prompt (K). A dry run: K from the pool size, as plan chooses it."""
    picks: int = 1
    """Candidates picked per prompt (1 <= picks < candidates)."""
    max_candidate_tokens: int = 24
    """Candidates longer than this many tokens are cut in the prompt (a dry run: the selector's
    default)."""
    max_tokens: int | None = 8
    """Answer length cap of generated ids (reasons and logprobs use the selection's default)."""
    warmup: int = 1
    """Untimed selections before the timed repeats (compile, fill caches)."""
    warmup_subsets: int = 4
    """Prompts per warm-up selection (a warm-up need not be full size)."""
    repeats: int = 2
    """Timed repeats (the median is reported)."""
    max_model_len: int = 4096
    """Context length of the engine."""
    stages: bool = True
    """Also run one real select and split its time per stage: engine vs our code."""
    stages_dir: Path | None = None
    """Run directory of the --stages select, kept; stages planned there before are reused."""
    machine: str = ""
    """Name of the machine, saved with the results."""
    seed: int = 0
    """Seed of the random weights and of the engine."""
    setting: list[str] = field(
        default_factory=lambda: ["vllm", "vllm:free", "vllm:logprobs", "transformers:b8"]
    )
    """Repeatable: a backend (vllm, transformers, auto) and options, e.g. vllm, vllm:free,
    vllm:logprobs, vllm:reasons, vllm:nocache, transformers:b8, auto:b64."""

    def __post_init__(self) -> None:
        self.pool, self.stages_dir = as_path(self.pool), as_path(self.stages_dir)
        self.cache_dir = Path(self.cache_dir)
        self._check_vocabularies()
        for name in ("subsets", "picks", "repeats", "max_model_len"):
            self._at_least(name, 1)
        for name in ("warmup", "warmup_subsets"):
            self._at_least(name, 0)
        self._at_least("candidates", 2)
        self._at_least("max_candidate_tokens", 1)
        if self.max_tokens is not None:
            self._at_least("max_tokens", 1)
        if self.picks >= self.candidates:
            raise self._bad(
                "picks", f"must be below --candidates (got {self.picks} of {self.candidates})."
            )
        if isinstance(self.setting, str):
            self.setting = [self.setting]
        if not self.setting:
            raise self._bad("setting", "needs at least one setting (e.g. --setting vllm).")
        self.setting = [str(s) for s in self.setting]
        _ = self.settings  # each spelled setting parses (errors name --setting)

    @property
    def settings(self) -> list[BenchSetting]:
        """The measured settings, parsed from ``setting`` (cheap: parsed when asked)."""
        return [parse_setting(s) for s in self.setting]


PRESETS: dict[str, dict[str, Any]] = {
    # CI: a 2-layer model, a handful of prompts, every code path (both backends, all modes).
    "tiny": {},
    # The CPU workload: Qwen2.5-0.5B shape, 64 Dolly subsets of 14 candidates.
    "cpu": dict(
        shape="qwen2.5-0.5b", subsets=64, candidates=14, max_candidate_tokens=40,
        tokenizer="pool", stages=False,
        setting=["vllm", "vllm:free", "vllm:logprobs", "vllm:reasons", "vllm:nocache",
                 "transformers:b8"],
    ),
    # Issue 10's GPU workload, one command (< 5 min on one H100/H200 with the model build):
    # Llama-3-8B shape, 96 Dolly prompts of 14 candidates, batch 64, generated ids and logprobs,
    # on vLLM when installed (else transformers: "auto"), plus one real `select` split into stages.
    "gpu": dict(
        shape="llama-3-8b", subsets=96, candidates=14, max_candidate_tokens=40,
        setting=["auto:b64", "auto:b64:logprobs"],
    ),
}  # fmt: skip
"""Named workloads: the settings each changes from ``BenchConfig``'s defaults (``tiny``)."""


def preset_values(name: str) -> dict[str, Any]:
    """The settings preset ``name`` changes (an unknown name is an error naming --preset)."""
    if name not in PRESETS:
        raise UserError(f"--preset {name!r} is not known. Presets: {', '.join(PRESETS)}.")
    return dict(PRESETS[name])


# What ``bench --dry-run`` reads of the benchmark's settings: the pool, the model and the prompt
# shape. The others are a measured run's, and a dry run given one refuses it (``BenchCommand``).
DRY_RUN_READS = ("pool", "shape", "model", "candidates", "max_candidate_tokens")


def bench_fields() -> tuple[str, ...]:
    """The names of the benchmark's settings (``BenchConfig``'s fields)."""
    return tuple(f.name for f in dataclasses.fields(BenchConfig))


def with_preset(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The settings ``given`` (a key present: given, by a flag, a config file or a script) over
    preset ``name``'s: defaults < preset < given. The one layering of the presets
    (``BenchCommand.layered`` and ``bench.config.config_from_preset`` both call it)."""
    return {**preset_values(name), **given}
