"""The benchmark's workload as a ``BenchConfig``, and the fixed keys of the results JSON.

The settings themselves (name, type, default, help) and the presets are declared once, in
``config/bench.py``, where the CLI and ``benchmarks/bench_select.py`` build their options from
them. This module adds what needs the installed packages: the ``auto`` backend of a setting
resolved to the engine this install has, and ``config_from_preset`` for scripts and tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from selectllm_local.config.bench import (
    PRESETS as PRESETS,  # re-exported: scripts name the presets from here
)
from selectllm_local.config.bench import (
    BenchConfig,
    BenchSetting,
    parse_setting,
    with_preset,
)

__all__ = ["PRESETS", "BenchConfig", "BenchSetting", "config_from_preset", "parse_setting"]

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


def resolve_settings(cfg: BenchConfig) -> BenchConfig:
    """``cfg`` with each ``auto`` setting on the engine this install has (vLLM, else
    transformers); ``cfg`` itself when it names no ``auto`` setting."""
    if all(s.backend != "auto" for s in cfg.settings):
        return cfg
    from selectllm_local.backends import resolve_backend_name

    engine = resolve_backend_name("auto")
    spelled = [
        dataclasses.replace(s, backend=engine).spelling if s.backend == "auto" else s.spelling
        for s in cfg.settings
    ]
    return dataclasses.replace(cfg, setting=spelled)


def config_from_preset(
    name: str, *, settings: Sequence[BenchSetting] | None = None, **overrides: Any
) -> BenchConfig:
    """Preset ``name`` with ``overrides`` (``None``: not given) on top, ``auto`` resolved.

    ``settings`` are measured settings as objects (scripts); ``setting`` their spellings. Layered
    as the command layers them (``config.bench.with_preset``)."""
    if settings is not None:
        overrides["setting"] = [s.spelling for s in settings]
    given = {k: v for k, v in overrides.items() if v is not None}
    return resolve_settings(BenchConfig(**with_preset(name, given)))
