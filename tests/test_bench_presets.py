"""The gpu benchmark preset resolves to issue 10's workload without touching a GPU (dry)."""

from __future__ import annotations

import importlib.util

from selectllm_local import tinymodel
from selectllm_local.bench import config as bench


def test_gpu_preset_is_the_issue_workload_on_the_installed_engine() -> None:
    cfg = bench.config_from_preset("gpu", pool="examples/dolly_sample_1500.jsonl")
    engine = "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
    assert cfg.shape == "llama-3-8b" and cfg.shape in tinymodel.SHAPES
    assert (cfg.subsets, cfg.candidates, cfg.stages) == (96, 14, True)
    assert [(s.backend, s.batch, s.mode) for s in cfg.settings] == [
        (engine, 64, "generate"),
        (engine, 64, "logprobs"),
    ]


def test_gpu_preset_keeps_explicit_settings_and_stage_choice() -> None:
    cfg = bench.config_from_preset(
        "gpu", settings=[bench.parse_setting("transformers:b32")], stages=False
    )
    assert [(s.backend, s.batch) for s in cfg.settings] == [("transformers", 32)]
    assert cfg.stages is False
    # The other presets are untouched by the gpu preset's late resolution.
    assert [s.backend for s in bench.config_from_preset("tiny").settings][0] == "vllm"
