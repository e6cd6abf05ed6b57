"""The keyword options each baseline takes come from its registry entry (``Baseline.options``).

``TODAY`` is what ``BaselineConfig.options`` (the name-spelling code this replaced) returned for
every baseline name, the deprecated one and an unknown one, with no variant and with each declared
variant, under the default settings and under a changed set: the registry must give the same.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from selectllm_local.baselines.registry import (
    BASELINES,
    DEPRECATED,
    KEYWORDS,
    REGISTRY,
    baseline_of,
    baseline_options,
)
from selectllm_local.config.training import BaselineConfig

CONFIGS = {
    "default": BaselineConfig(),
    "set": BaselineConfig(
        shortest=True, band="low", scorer_batch_size=3, diversity_sample=7, ifd_max_length=99
    ),
}
_P = "answer-perplexity", "instruction-perplexity", "perplexity"
TODAY: dict[tuple[str, str, str], dict[str, Any]] = {
    ("default", "random", ""): {},
    ("default", "kcenter", ""): {},
    ("default", "cluster-random", ""): {},
    ("default", "no-such", ""): {},
    ("default", "length", ""): {"shortest": False},
    ("default", "length", "longest"): {"shortest": False},
    ("default", "length", "shortest"): {"shortest": True},
    ("default", "diversity", ""): {"sample_size": 500},
    ("default", "ifd", ""): {"max_length": 1024},
    ("default", "cluster-ifd", ""): {"max_length": 1024},
    **{("default", p, ""): {"band": "high", "batch_size": 16} for p in _P},
    **{("default", p, b): {"band": b, "batch_size": 16} for p in _P for b in ("high", "low", "middle")},
    ("set", "random", ""): {},
    ("set", "kcenter", ""): {},
    ("set", "cluster-random", ""): {},
    ("set", "no-such", ""): {},
    ("set", "length", ""): {"shortest": True},
    ("set", "length", "longest"): {"shortest": False},
    ("set", "length", "shortest"): {"shortest": True},
    ("set", "diversity", ""): {"sample_size": 7},
    ("set", "ifd", ""): {"max_length": 99},
    ("set", "cluster-ifd", ""): {"max_length": 99},
    **{("set", p, ""): {"band": "low", "batch_size": 3} for p in _P},
    **{("set", p, b): {"band": b, "batch_size": 3} for p in _P for b in ("high", "low", "middle")},
    # a variant a baseline does not declare (the experiment refuses these): ignored or taken as is
    ("default", "diversity", "low"): {"sample_size": 500},
    ("set", "ifd", "shortest"): {"max_length": 99},
    ("set", "random", "high"): {},
    ("set", "length", "bogus"): {"shortest": False},
    ("default", "answer-perplexity", "bogus"): {"band": "bogus", "batch_size": 16},
}  # fmt: skip


def test_the_table_covers_every_name_and_variant() -> None:
    names = [*BASELINES, *DEPRECATED, "no-such"]
    wanted = {
        (c, n, v)
        for c in CONFIGS
        for n in names
        for v in ("", *(REGISTRY[n].variants if n in REGISTRY else ()))  # type: ignore[index]
    }
    wanted |= {(c, n, v) for c in CONFIGS for n in DEPRECATED for v in baseline_of(n).variants}
    assert wanted <= set(TODAY)


@pytest.mark.parametrize(("config", "name", "variant"), sorted(TODAY))
def test_options_are_what_the_name_spelling_code_gave(config: str, name: str, variant: str) -> None:
    got = baseline_options(CONFIGS[config], name, variant)
    assert got == TODAY[config, name, variant]
    assert [type(v) for v in got.values()] == [
        type(v) for v in TODAY[config, name, variant].values()
    ]


def test_every_declared_option_is_a_baseline_setting_and_a_variant_has_one_to_set() -> None:
    fields = {f.name for f in dataclasses.fields(BaselineConfig)}
    for name, entry in REGISTRY.items():
        assert set(entry.options) <= fields, name
        assert not entry.variants or entry.options, f"{name}: a variant needs an option to set"
    assert set(KEYWORDS) <= fields
    used = {f for entry in REGISTRY.values() for f in entry.options}
    assert used == fields - {
        "scorer_model"
    }  # every setting but the scorer's model reaches a runner
