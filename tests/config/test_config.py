"""Configuration: precedence (defaults < file < flags), unknown keys and flags, shipped configs.

The CLI checks run the real commands in-process (``split`` is the cheapest real command: it reads
the pool and writes two files, no model), so they test the flag machinery end to end.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from selectllm_local.cli import app
from selectllm_local.config import (
    SECTIONS,
    EngineConfig,
    FinetuneCommand,
    FinetuneConfig,
    PlanConfig,
    SelectConfig,
    build,
    field_docs,
    file_values,
    read_toml,
)
from selectllm_local.config.base import field_types, is_section
from selectllm_local.errors import UserError
from selectllm_local.experiment.config import ExperimentTable
from tests.helpers import EXAMPLE_POOL, REPO

COMMANDS = ("plan", "select", "baseline", "split", "finetune", "evaluate", "experiment", "bench",
            "report", "random-model", "models", "models fetch")  # fmt: skip


def invoke(*args: str):  # noqa: ANN201 - click Result
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})


def split_seed(tmp_path: Path, *args: str, config: str | None = None) -> int:
    """Run ``split`` and return the seed it recorded in split.json."""
    extra: list[str] = []
    if config is not None:
        (tmp_path / "c.toml").write_text(config)
        extra = ["--config", str(tmp_path / "c.toml")]
    out = tmp_path / "out"
    r = invoke("split", str(EXAMPLE_POOL), "--test", "5", "--out", str(out), *extra, *args)
    assert r.exit_code == 0, r.output
    return json.loads((out / "split.json").read_text())["seed"]


def test_precedence_defaults_file_flags(tmp_path: Path) -> None:
    assert split_seed(tmp_path) == 0  # default
    assert split_seed(tmp_path, config="seed = 3\n") == 3  # file over default
    assert split_seed(tmp_path, "--seed", "7", config="seed = 3\n") == 7  # flag over file
    # a flag counts because it was given, not because it differs from the default
    assert split_seed(tmp_path, "--seed", "0", config="[split]\nseed = 3\n") == 0


def test_output_location_aliases(tmp_path: Path) -> None:
    r = invoke(
        "split", str(EXAMPLE_POOL), "--test", "5", "--run-dir", str(tmp_path / "o"), "--json"
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["test_rows"] == 5 and (tmp_path / "o" / "test.jsonl").exists()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("budget = 5\nbudgett = 6\n", "budgett"),
        (
            "[plan]\nbudget = 5\nk = 3\n",
            "[plan] has unknown key(s): k. The key of --k is n_clusters",
        ),
        ("[engine]\nmodell = 'x'\n", "[engine] has unknown key(s): modell"),
        ("[planning]\nbudget = 5\n", "unknown table [planning]"),
        ("[select]\nmodel = 'x'\n", "[select] is now [selector]"),
        ("model = 'x'\n", "unknown key 'model'"),  # a select setting is not one of plan's
    ],
)
def test_unknown_config_key_exits_2_naming_key_and_file(
    tmp_path: Path, text: str, named: str
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    r = invoke("plan", str(EXAMPLE_POOL), "--config", str(cfg), "--run-dir", str(tmp_path / "r"))
    assert r.exit_code == 2, r.output
    message = " ".join(r.output.split())
    assert named in message and str(cfg) in message.replace(" ", "")
    assert "Traceback" not in r.output and not (tmp_path / "r").exists()


def test_models_config_file_with_an_unknown_key_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text("colour = 1\n")
    r = invoke("models", "--config", str(cfg))
    assert r.exit_code == 2 and "'colour'" in r.output and "Traceback" not in r.output


def test_unknown_flag_exits_2_naming_it() -> None:
    for cmd in ("plan", "select", "finetune"):
        r = invoke(cmd, "x", "--budgett", "5")
        assert r.exit_code == 2 and "--budgett" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_accepts_config_and_json(tmp_path: Path, command: str) -> None:
    help_text = invoke(*command.split(), "--help").output
    assert "--config" in help_text and "--json" in help_text
    r = invoke(*command.split(), "--config", str(tmp_path / "nope.toml"))
    assert r.exit_code == 2 and "nope.toml" in r.output and "does not exist" in r.output


def test_every_finetune_setting_is_a_flag() -> None:
    text = " ".join(invoke("finetune", "--help").output.split())
    for name in FinetuneConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in text, name


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    raw = read_toml(path)
    assert set(raw) <= {"experiment", *SECTIONS}
    for table, values in raw.items():
        cls = ExperimentTable if table == "experiment" else SECTIONS[table]
        known = set(cls.__dataclass_fields__)
        assert set(values) <= known, (table, set(values) - known)
    # the same file serves `selectllm select --config` (the [experiment] table is skipped)
    values = file_values(path, SelectConfig, command="select")
    assert values["n_clusters"] > 1 and values["model"]


SHIPPED_TOML = sorted((REPO / "configs").glob("*.toml")) + sorted(
    (REPO / "experiments").glob("*.toml")
)
SHIPPED_EXPERIMENTS = [p for p in SHIPPED_TOML if "experiment" in read_toml(p)]


def test_every_file_in_experiments_is_a_checked_experiment() -> None:
    shipped = sorted((REPO / "experiments").glob("*.toml"))
    assert shipped, "experiments/ holds no experiment config"
    assert set(shipped) <= set(SHIPPED_EXPERIMENTS)  # each has an [experiment] table


@pytest.mark.parametrize("path", SHIPPED_EXPERIMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_experiments_load_and_validate(path: Path) -> None:
    """Every shipped experiment (configs/ and experiments/) reads and validates as
    ``selectllm experiment CONFIG --dry-run`` reads it: known keys only, the pool and test set
    found and loaded, methods, budgets and recipe checked; models need not be on this machine."""
    from selectllm_local.experiment import load_experiment_config

    raw = read_toml(path)
    assert set(raw) <= {"experiment", *SECTIONS}
    for table, values in raw.items():
        cls = ExperimentTable if table == "experiment" else SECTIONS[table]
        known = set(cls.__dataclass_fields__)
        assert set(values) <= known, (table, set(values) - known)
    from selectllm_local.experiment.inputs import load_inputs

    cfg = load_experiment_config(path, require_models=False)
    data = load_inputs(cfg)  # as the runner and the dry run load them
    assert cfg.methods and cfg.budgets and cfg.seeds and data.test_rows
    assert max(cfg.budgets) < len(data.pool_items), (cfg.budgets, len(data.pool_items))


def test_shared_setting_sets_every_section_and_required_names_the_flag() -> None:
    cfg = SelectConfig.of(pool="p.jsonl", budget=4, seed=3, device="cpu", model="m")
    assert cfg.plan.seed == cfg.selector.seed == cfg.engine.seed == 3
    assert cfg.plan.device == cfg.engine.device == "cpu" and cfg.engine.model == "m"
    with pytest.raises(UserError, match="Missing --budget"):
        SelectConfig.of(pool="p.jsonl")
    with pytest.raises(UserError, match="Missing POOL"):
        build(PlanConfig, {"budget": 3})


@pytest.mark.parametrize(
    ("cls", "kw", "flag"),
    [
        (PlanConfig, {"pool": "p", "budget": 0}, r"--budget \(plan.budget"),
        (PlanConfig, {"pool": "p", "budget": 2, "n_clusters": 1}, r"--k \(plan.n_clusters"),
        (PlanConfig, {"pool": "p", "budget": 2, "layout": "zig"}, "--layout"),
        (EngineConfig, {"gpu_memory_utilization": 1.5}, "--gpu-memory-utilization"),
        (EngineConfig, {"dtype": "fp8"}, r"--dtype \(engine.dtype"),
        (EngineConfig, {"batch_size": 0}, r"--batch-size \(engine.batch_size"),
    ],
)
def test_validation_names_the_flag_and_the_key(cls: type, kw: dict, flag: str) -> None:
    with pytest.raises(UserError, match=flag):
        cls(**kw)


def test_engine_batch_size_defaults_to_auto_and_the_flag_still_sets_it(tmp_path: Path) -> None:
    # None: 16 on CPU, sized from free GPU memory on CUDA (backends/batchsize.py).
    assert EngineConfig().batch_size is None
    assert SelectConfig.of(pool="p.jsonl", budget=4).engine.batch_size is None
    assert SelectConfig.of(pool="p.jsonl", budget=4, batch_size=8).engine.batch_size == 8
    (tmp_path / "c.toml").write_text("[engine]\nbatch_size = 12\n")
    values = file_values(tmp_path / "c.toml", SelectConfig, command="select")
    assert build(SelectConfig, {**values, "pool": "p.jsonl", "budget": 4}).engine.batch_size == 12


def test_bench_stages_and_gpu_preset_flags_reach_the_benchmark(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import inspect

    from selectllm_local.bench import command as bench_command_mod
    from selectllm_local.config import BenchCommand

    # bench_command takes the BenchCommand itself: its settings are declared once.
    params = list(inspect.signature(bench_command_mod.bench_command).parameters)
    assert params == ["cmd", "progress"]
    seen: list[dict] = []

    def record(cmd: BenchCommand, **kw: object) -> tuple[dict, str]:
        seen.append({"preset": cmd.preset, "stages": cmd.bench.stages})
        return {}, ""

    monkeypatch.setattr(bench_command_mod, "bench_command", record)
    # The preset's choice unless a flag says otherwise (gpu runs the stages, cpu does not).
    cases = (("gpu", [], True), ("gpu", ["--no-stages"], False), ("cpu", [], False),
             ("cpu", ["--stages"], True))  # fmt: skip
    for preset, flags, stages in cases:
        r = invoke("bench", "--pool", str(EXAMPLE_POOL), "--preset", preset, *flags)
        assert r.exit_code == 0, r.output
        assert seen[-1] == {"preset": preset, "stages": stages}


def test_every_setting_has_a_docstring() -> None:
    from selectllm_local.config import BenchCommand, BenchConfig

    classes = (*SECTIONS.values(), SelectConfig, FinetuneCommand, ExperimentTable, BenchConfig,
               BenchCommand)  # fmt: skip
    for cls in classes:
        docs = field_docs(cls)
        for name, f in cls.__dataclass_fields__.items():
            if f.metadata.get("cli", True) and not is_section(field_types(cls)[name]):
                assert docs.get(name), f"{cls.__name__}.{name} has no docstring"


def test_pyproject_lists_every_subpackage() -> None:
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "selectllm_local").rglob("__init__.py")
    }
    assert on_disk <= listed, on_disk - listed


def test_experiment_takes_its_file_as_argument_or_as_config(tmp_path: Path) -> None:
    text = (REPO / "configs" / "tiny_ci.toml").read_text().replace('"../', f'"{REPO}/')
    cfg = tmp_path / "e.toml"
    cfg.write_text(text.replace('methods = ["select"', 'methods = ["nope", "select"'))
    for args in ([str(cfg)], ["--config", str(cfg)]):
        r = invoke("experiment", *args, "--run-dir", str(tmp_path / "r"))
        assert r.exit_code == 2 and "unknown method 'nope'" in r.output, r.output


def test_every_vocabulary_field_refuses_an_unknown_word_naming_its_flag() -> None:
    """Each vocabulary is one ``Literal`` (config/vocab.py); every field typed with one checks it."""
    import dataclasses

    from selectllm_local.config import commands
    from selectllm_local.config.base import flag_name
    from selectllm_local.config.vocab import vocabulary

    required = {"pool": "p", "budget": 2, "name": "x", "shape": "tiny-qwen2", "out_dir": "o"}
    classes = [*SECTIONS.values(), commands.SelectConfig, commands.BenchConfig,
               commands.RandomModelCommand]  # fmt: skip
    checked = []
    for cls in classes:
        for f in dataclasses.fields(cls):
            words = vocabulary(field_types(cls)[f.name])
            if not words:
                continue
            values = {k: v for k, v in required.items() if k in cls.__dataclass_fields__}
            if "plan" in cls.__dataclass_fields__:
                values["plan"] = PlanConfig(pool="p", budget=2)
            for word in words:  # every word of the vocabulary is accepted
                cls(**values, **{f.name: word})
            with pytest.raises(UserError, match=flag_name(cls, f.name) + ".*must be one of"):
                cls(**values, **{f.name: "no-such-word"})
            checked.append(f"{cls.__name__}.{f.name}")
    assert {"PlanConfig.layout", "SelectorConfig.mode", "EngineConfig.dtype",
            "BaselineConfig.band", "FinetuneConfig.quantization", "BenchConfig.dtype",
            "BenchConfig.tokenizer"} <= set(checked)  # fmt: skip


def test_evaluation_engine_settings_reach_the_engine_from_flags_and_files(tmp_path: Path) -> None:
    """[evaluate.engine] (flags of `evaluate`) is the evaluation's engine: every setting arrives."""
    from selectllm_local.config import EvaluateCommand
    from selectllm_local.evaluation.answers import engine_options

    flags = {"test_set": "t.jsonl", "base_model": "m", "out": "o"}
    cmd = EvaluateCommand.of(**flags, gpu_memory_utilization=0.5, max_num_seqs=4,
                             tensor_parallel_size=2, backend="vllm", limit=3)  # fmt: skip
    engine = engine_options(cmd.evaluate, adapter=None)
    assert (engine.gpu_memory_utilization, engine.max_num_seqs) == (0.5, 4)
    assert engine.tensor_parallel_size == 2 and engine.backend == "vllm"
    assert engine.batch_size == 16 and cmd.evaluate.limit == 3  # the evaluation's default batch
    (tmp_path / "e.toml").write_text(
        "[evaluate]\nmax_new_tokens = 7\n[evaluate.engine]\nmax_num_seqs = 3\nbatch_size = 2\n"
        "[engine]\nmax_num_seqs = 99\n"  # the selector's engine: not the evaluation's
    )
    values = file_values(tmp_path / "e.toml", EvaluateCommand, command="evaluate")
    cmd = EvaluateCommand.of(**flags, **values)
    assert cmd.evaluate.max_new_tokens == 7 and cmd.evaluate.engine.max_num_seqs == 3
    assert engine_options(cmd.evaluate, adapter=None).batch_size == 2


def test_old_evaluate_keys_still_work_and_name_their_new_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from selectllm_local.config import EvaluateCommand

    old = tmp_path / "old.toml"
    old.write_text('[evaluate]\nbackend = "transformers"\nbatch_size = 3\nmax_new_tokens = 5\n')
    values = file_values(old, EvaluateCommand, command="evaluate")
    cmd = EvaluateCommand.of(test_set="t", base_model="m", out="o", **values)
    assert cmd.evaluate.engine.backend == "transformers" and cmd.evaluate.engine.batch_size == 3
    # an experiment file's [evaluate] table: the old keys move, with a warning naming the place
    from selectllm_local.config import EvaluateConfig

    table = EvaluateConfig.table({"backend": "vllm", "limit": 2})
    assert table == {"limit": 2, "engine": {"backend": "vllm"}}
    assert "[evaluate] backend is now [evaluate.engine] backend" in caplog.text
    with pytest.raises(UserError, match=r"seed is now \[evaluate.engine\] seed"):
        EvaluateConfig.table({"seed": 1, "engine": {"seed": 2}})
    bad = tmp_path / "bad.toml"
    bad.write_text("[evaluate.engine]\nmax_num_seq = 2\n")
    with pytest.raises(UserError, match=r"\[evaluate.engine\] has unknown key\(s\): max_num_seq"):
        file_values(bad, EvaluateCommand, command="evaluate")
    r = invoke("evaluate", "t.jsonl", "--base-model", "m", "--out", str(tmp_path), "--model", "x")
    out = " ".join(r.output.split())  # evaluate has no --model: the usage error points elsewhere
    assert r.exit_code == 2 and "No such option: --model" in out and "--base-model" in out, out
