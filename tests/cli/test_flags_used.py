"""A command shows only the flags it uses: none that it would silently ignore.

``evaluate`` runs its engine in this process on the base model it is given, so the engine's
``--model``, ``--lora-path`` and Ray flags mean nothing there: its help lists none of them, every
flag it lists reaches the evaluation, and the hidden settings given in a file exit 2 naming
them. ``experiment``'s estimate settings go only with ``--dry-run``, and its run settings only
without it.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from selectllm_local.cli import app
from selectllm_local.config import (
    EngineConfig,
    EvaluateCommand,
    EvaluateConfig,
    ExperimentCommand,
    loader,
)
from selectllm_local.config.base import field_types
from selectllm_local.config.commands import DRY_RUN_ONLY, REAL_RUN_ONLY
from selectllm_local.config.training import ENGINE_NOT_TAKEN
from selectllm_local.config.vocab import vocabulary
from selectllm_local.errors import UserError
from tests.helpers import TINY_CI

WIDE = {"COLUMNS": "300"}  # no flag name cut short in the help
COMMON = {"help", "config_file", "json_out"}


def _shown_flags(command: str) -> set[str]:
    r = CliRunner().invoke(app, [command, "--help"], env=WIDE)
    assert r.exit_code == 0, r.output
    words = r.output.replace("/", " ").replace(",", " ").split()
    words = [w.rstrip(".,;:)") for w in words]
    return {w for w in words if w.startswith("-") and w.lstrip("-")[:1].isalpha()}


def _options(command: str) -> list[Any]:
    """The click options of ``command`` (typer vendors click: read by duck typing)."""
    cmd = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return [p for p in cmd.params if p.param_type_name == "option" and p.name not in COMMON]


def test_evaluate_help_lists_no_flag_that_evaluate_ignores() -> None:
    shown = _shown_flags("evaluate")
    assert "--backend" in shown and "--max-num-seqs" in shown  # engine flags it uses are there
    assert not [f for f in shown if f.startswith(("--ray", "--no-ray"))], shown
    assert not {"--model", "-m", "--lora-path"} & shown, shown
    hidden = {"--" + name.replace("_", "-") for name in ENGINE_NOT_TAKEN}
    assert hidden.isdisjoint(shown)
    assert {p.name for p in _options("evaluate")}.isdisjoint(ENGINE_NOT_TAKEN)


def _non_default(option: Any) -> tuple[list[str], Any]:
    """Command-line words giving ``option`` a valid value other than its default, and the value."""
    name = option.name
    if option.is_flag:
        on = not option.default
        return [option.opts[0] if on else option.secondary_opts[0]], on
    owner, f = loader.leaves(EvaluateCommand)[name][0]
    tp = field_types(owner)[name]
    kinds = set(typing.get_args(tp) or (tp,)) - {type(None)}
    words, default = vocabulary(tp), f.default
    value: Any
    if words:
        value = next(w for w in words if w not in (default, "auto", "fake"))
    elif int in kinds:
        value = default * 2 if default else 64
    elif float in kinds:
        value = default / 2 if default else 0.5
    elif Path in kinds:
        value = Path("some") / "folder"
    else:
        assert kinds == {str}, (name, tp)
        value = "cpu" if name == "device" else "x"
    return [option.opts[0], str(value)], value


def test_every_flag_evaluate_lists_reaches_the_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selectllm_local.evaluation import evaluate as evaluate_module
    from selectllm_local.evaluation.answers import engine_options

    calls: list[dict[str, Any]] = []

    class Outcome:
        def to_dict(self) -> dict[str, Any]:
            return {}

    def record(test_set: Path, **kw: Any) -> Outcome:
        calls.append(kw)
        return Outcome()

    monkeypatch.setattr(evaluate_module, "evaluate_run", record)
    required = ["test.jsonl", "--base-model", "base", "--out", str(tmp_path / "out")]
    options = _options("evaluate")
    flags = {o.opts[0] for o in options}
    assert flags == {f for f in _shown_flags("evaluate") if f.startswith("--")} - {
        "--help",
        "--config",
        "--json",
        "--run-dir",
        "--no-batch-invariant",
        "--no-prefix-caching",
        "--no-enforce-eager",
    }  # fmt: skip  (every listed flag is tried below: the first spelling of each)
    engine_names = {f.name for f in dataclasses.fields(EngineConfig)}
    for option in options:
        if option.name in ("base_model", "out"):
            continue
        words, value = _non_default(option)
        r = CliRunner().invoke(app, ["evaluate", *required, *words, "--json"], env=WIDE)
        assert r.exit_code == 0, (words, r.output)
        kw = calls.pop()
        config: EvaluateConfig = kw["config"]
        if option.name == "adapter":
            assert kw["adapter"] == value
        elif option.name in engine_names:  # what the evaluation's backend is loaded with
            assert getattr(engine_options(config, adapter=None), option.name) == value, words
        else:
            assert getattr(config, option.name) == value, words


@pytest.mark.parametrize("setting", ["ray", "ray_actors", "model", "lora_path"])
def test_an_engine_setting_evaluate_does_not_take_exits_2_from_a_file(
    tmp_path: Path, setting: str
) -> None:
    value = {"ray": "local", "ray_actors": 2, "model": "m", "lora_path": "a"}[setting]
    cfg = tmp_path / "eval.toml"
    cfg.write_text(f"[evaluate.engine]\n{setting} = {json.dumps(value)}\n")
    args = ["evaluate", "t.jsonl", "--base-model", "b", "--out", str(tmp_path / "o")]
    r = CliRunner().invoke(app, [*args, "--config", str(cfg)], env=WIDE)
    assert r.exit_code == 2, r.output
    msg = " ".join(r.output.split())
    assert f"{setting} = " in msg and "Traceback" not in msg, msg
    with pytest.raises(UserError, match=f"{setting} = "):  # an experiment's [evaluate.engine]
        EvaluateConfig(engine=EngineConfig(**{setting: value}))


def test_experiment_estimate_flags_go_only_with_dry_run(tmp_path: Path) -> None:
    values = {"pool": "p.jsonl", "rates": "r.json", "gpu_rates": "g.json", "gpu": "h200",
              "utilization": "0.5"}  # fmt: skip
    assert values.keys() == DRY_RUN_ONLY.keys()
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        r = CliRunner().invoke(app, ["experiment", str(TINY_CI), flag, value], env=WIDE)
        assert r.exit_code == 2, (flag, r.output)
        assert flag in r.output and "--dry-run" in r.output, r.output


def test_experiment_estimate_flags_at_their_default_are_refused_too(tmp_path: Path) -> None:
    # Given at its default value, a dry-run setting is still one that a real run would ignore.
    # (--max-cells 0 and --run-dir: were it not refused, the run would do nothing, elsewhere.)
    real = ["experiment", str(TINY_CI), "--max-cells", "0", "--run-dir", str(tmp_path / "r")]
    for flag, value in (("--gpu", "h100"), ("--utilization", "0.4")):
        r = CliRunner().invoke(app, [*real, flag, value], env=WIDE)
        assert r.exit_code == 2, (flag, r.output)
        assert flag in r.output and "--dry-run" in r.output, r.output
    with pytest.raises(UserError, match="--gpu"):  # named in code (scripts) at its default too
        ExperimentCommand.of(config=TINY_CI, gpu="h100")
    r = CliRunner().invoke(app, ["experiment", str(TINY_CI), "--dry-run", "--max-cells", "0"],
                           env=WIDE)  # fmt: skip
    assert r.exit_code == 2 and "--max-cells" in r.output, r.output


def test_experiment_run_flags_do_not_go_with_dry_run() -> None:
    values = {"run_dir": "elsewhere", "max_cells": "2"}
    assert values.keys() == REAL_RUN_ONLY.keys()
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        args = ["experiment", str(TINY_CI), "--dry-run", flag, value]
        r = CliRunner().invoke(app, args, env=WIDE)
        assert r.exit_code == 2, (flag, r.output)
        assert flag in r.output and "--dry-run" in r.output, r.output
