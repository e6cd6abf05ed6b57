"""Typed, validated configuration: one home for every setting.

Sections (``sections.py``, ``training.py``) are what the stages take: ``PlanConfig`` (stages 1-5),
``SelectorConfig`` (how picks are asked for), ``EngineConfig`` (the LLM engine: what the backends
take), ``BaselineConfig``, ``FinetuneConfig``, ``EvaluateConfig`` and ``BenchConfig`` (``bench.py``:
the benchmark's, with named presets laid under the file). Commands compose the sections
they need (``commands.py``). One loader (``loader.py``) reads ``--config`` files and experiment
files with the same tables and rejects unknown keys. Precedence: defaults < config file < flags.
Each field has a docstring (its flag's help) and is validated in ``__post_init__`` with a message
naming the flag and the config key. The resolved config is saved with every output.
"""

from selectllm_local.config.base import REQUIRED, Section, field_docs, setting, to_jsonable
from selectllm_local.config.bench import BenchConfig
from selectllm_local.config.commands import (
    BaselineCommand,
    BenchCommand,
    Command,
    CompareCommand,
    EvaluateCommand,
    ExperimentCommand,
    FinetuneCommand,
    ModelsFetchCommand,
    ModelsListCommand,
    RandomModelCommand,
    ReportCommand,
    SelectConfig,
    SplitConfig,
)
from selectllm_local.config.loader import SECTIONS, build, check_keys, file_values, read_toml
from selectllm_local.config.sections import (
    DEFAULT_EMBEDDER,
    DEFAULT_MAX_K,
    EngineConfig,
    PlanConfig,
    SelectorConfig,
)
from selectllm_local.config.training import BaselineConfig, EvaluateConfig, FinetuneConfig
from selectllm_local.config.vocab import LAYOUTS

__all__ = [
    "DEFAULT_EMBEDDER",
    "DEFAULT_MAX_K",
    "LAYOUTS",
    "REQUIRED",
    "SECTIONS",
    "BaselineCommand",
    "BaselineConfig",
    "BenchCommand",
    "BenchConfig",
    "Command",
    "CompareCommand",
    "EngineConfig",
    "EvaluateCommand",
    "EvaluateConfig",
    "ExperimentCommand",
    "FinetuneCommand",
    "ModelsFetchCommand",
    "ModelsListCommand",
    "FinetuneConfig",
    "PlanConfig",
    "RandomModelCommand",
    "ReportCommand",
    "Section",
    "SelectConfig",
    "SelectorConfig",
    "SplitConfig",
    "build",
    "check_keys",
    "field_docs",
    "file_values",
    "read_toml",
    "setting",
    "to_jsonable",
]
