"""The benchmark's options: every setting has a flag in both entry points, presets sit under the
flags, bad values exit 2 naming the flag. No model is loaded (the command is recorded or dry)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from typer.testing import CliRunner

from selectllm_local.cli import app
from selectllm_local.cluster.kmeans import choose_k
from selectllm_local.config import BenchCommand, BenchConfig
from selectllm_local.config.base import flags_of
from selectllm_local.config.bench import PRESETS, parse_setting
from selectllm_local.errors import UserError
from tests.helpers import EXAMPLE_POOL, REPO

SCRIPT = REPO / "benchmarks" / "bench_select.py"
# The flags the script had before its options came from the config (git log -p of the script).
OLD_SCRIPT_FLAGS = (
    "--preset --pool --shape --model --dtype --tokenizer --subsets --candidates --picks "
    "--max-candidate-tokens --warmup --repeats --setting --machine --out --name --cache-dir "
    "--dry-run --gpu --utilization --budget -v --verbose"
).split()


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_select", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _script_flags() -> set[str]:
    return {s for action in _script().parser()._actions for s in action.option_strings}


def _cli_help_flags() -> set[str]:
    r = CliRunner().invoke(app, ["bench", "--help"], env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.output
    return set(r.output.replace("/", " ").replace(",", " ").split())


def _setting_flags() -> dict[str, str]:
    """Every setting of the benchmark (all of ``BenchConfig``'s, and the command's own but the
    record of what was given) -> its flag."""
    out = {f"BenchConfig.{f.name}": flags_of(f)[0] for f in dataclasses.fields(BenchConfig)}
    for f in dataclasses.fields(BenchCommand):
        if f.metadata.get("cli", True) and f.name != "bench":
            out[f"BenchCommand.{f.name}"] = flags_of(f)[0]
    return out


def test_every_bench_setting_has_a_flag_in_the_script_and_in_the_cli() -> None:
    flags = _setting_flags()
    assert len(flags) >= 26  # 20 benchmark settings and the command's own
    script, cli = _script_flags(), _cli_help_flags()
    assert not [n for n, flag in flags.items() if flag not in script], script
    assert not [n for n, flag in flags.items() if flag not in cli], cli
    assert not [f for f in OLD_SCRIPT_FLAGS if f not in script]


def test_presets_name_only_declared_settings_and_each_builds() -> None:
    fields = {f.name for f in dataclasses.fields(BenchConfig)}
    for name, values in PRESETS.items():
        assert set(values) <= fields, name
        cmd = BenchCommand.of(pool=EXAMPLE_POOL, preset=name)
        assert {k: getattr(cmd.bench, k) for k in values} == values
        assert cmd.given == ("pool", "preset")
    with pytest.raises(Exception, match="--preset 'huge' is not known"):
        BenchCommand.of(pool=EXAMPLE_POOL, preset="huge")


def test_spelled_settings_round_trip() -> None:
    for text in ("vllm", "vllm:free", "transformers:b8", "vllm:logprobs:nocache", "auto:b64",
                 "vllm:reasons", "hf:b2:free"):  # fmt: skip
        s = parse_setting(text)
        assert parse_setting(s.spelling) == s


def _recorded(monkeypatch: pytest.MonkeyPatch) -> list[BenchCommand]:
    from selectllm_local.bench import command as bench_command_mod

    seen: list[BenchCommand] = []

    def record(cmd: BenchCommand, **kw: object) -> tuple[dict[str, Any], str]:
        seen.append(cmd)
        return {}, ""

    monkeypatch.setattr(bench_command_mod, "bench_command", record)
    return seen


def test_a_flag_overrides_the_preset_in_the_cli_the_script_and_under_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = _recorded(monkeypatch)
    args = ["--pool", str(EXAMPLE_POOL), "--preset", "cpu", "--picks", "2", "--warmup", "0",
            "--tokenizer", "toy", "--cache-dir", str(tmp_path / "models")]  # fmt: skip
    r = CliRunner().invoke(app, ["bench", *args])
    assert r.exit_code == 0, r.output
    script, _ = _script().options(args)
    for cmd in (seen[-1], script):
        b = cmd.bench
        assert (b.picks, b.warmup, b.tokenizer, b.cache_dir) == (2, 0, "toy", tmp_path / "models")
        # what no flag gave is the preset's (cpu), not BenchConfig's default (tiny)
        assert (b.shape, b.candidates, b.max_candidate_tokens) == ("qwen2.5-0.5b", 14, 40)
        assert b.settings == [parse_setting(s) for s in PRESETS["cpu"]["setting"]]
    # defaults < preset < config file < flags
    (tmp_path / "b.toml").write_text("[bench]\npicks = 3\nsubsets = 5\n")
    r = CliRunner().invoke(app, ["bench", *args, "--config", str(tmp_path / "b.toml")])
    assert r.exit_code == 0, r.output
    assert (seen[-1].bench.picks, seen[-1].bench.subsets) == (2, 5)
    assert BenchCommand.of(pool=EXAMPLE_POOL, preset="tiny", picks=2).bench.picks == 2


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--preset", "tiny", "--picks", "6"], "--picks"),  # tiny has 6 candidates
        (["--tokenizer", "bpe"], "--tokenizer"),
        (["--setting", "tensorrt"], "--setting"),
        (["--warmup", "-1"], "--warmup"),
        (["--dtype", "int3"], "--dtype"),
        (["--preset", "huge"], "--preset"),
        (["--plan-only"], "--stages-dir"),
        (["--budget", "10"], "--budget"),  # dry-run settings on a measured run
        (["--gpu", "h200"], "--gpu"),
        (["--utilization", "0.5"], "--utilization"),
        (["--gpu", "h100"], "--gpu"),  # given at its default value: refused all the same
        (["--utilization", "0.4"], "--utilization"),
        (["--dry-run", "--preset", "tiny"], "--preset"),  # measured-run settings on a dry run
        (["--dry-run", "--warmup", "1"], "--warmup"),  # (the defaults, given)
        (["--dry-run", "--setting", "vllm:free"], "--setting"),
        (["--dry-run", "--out", "benchmarks/results"], "--out"),
        (["--dry-run", "--plan-only", "--stages-dir", "x"], "--plan-only"),
    ],
)
def test_a_bad_value_exits_2_naming_the_flag(args: list[str], flag: str) -> None:
    full = ["--pool", str(EXAMPLE_POOL), *args]
    r = CliRunner().invoke(app, ["bench", *full], env={"COLUMNS": "300"})
    assert r.exit_code == 2 and flag in r.output and "Traceback" not in r.output, r.output
    proc = subprocess.run([sys.executable, str(SCRIPT), *full], capture_output=True, text=True,
                          cwd=REPO, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and flag in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not proc.stdout


def test_the_script_refuses_a_value_of_the_wrong_type_naming_the_flag() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--pool", "p", "--picks", "two"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "--picks" in proc.stderr and "Traceback" not in proc.stderr


def test_a_setting_of_the_other_mode_is_refused_by_what_was_given(tmp_path: Path) -> None:
    """Refused whether typed or in the config file, at any value (the default included), each
    one named: a dry run takes no preset and none of a measured run's settings, a measured run
    none of the estimate's."""
    pool = ["--pool", str(EXAMPLE_POOL)]
    r = CliRunner().invoke(app, ["bench", "--dry-run", *pool, "--preset", "cpu", "--repeats", "9",
                                 "--setting", "vllm:free", "--warmup", "3"])  # fmt: skip
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    for flag in ("--preset", "--repeats", "--setting", "--warmup"):
        assert flag in r.output, (flag, r.output)
    measured = tmp_path / "measured.toml"
    measured.write_text('gpu = "h100"\n[bench]\nwarmup = 1\n')  # both at their defaults
    r = CliRunner().invoke(app, ["bench", *pool, "--config", str(measured)])
    assert r.exit_code == 2 and "--gpu (gpu in a config file)" in r.output, r.output
    r = CliRunner().invoke(app, ["bench", "--dry-run", *pool, "--config", str(measured)])
    assert r.exit_code == 2 and "--warmup (bench.warmup in a config file)" in r.output, r.output
    assert "--gpu" not in r.output  # a dry run takes it
    with pytest.raises(UserError, match="--budget"):  # in code too, by value
        BenchCommand(bench=BenchConfig(pool=EXAMPLE_POOL), budget=10)
    # What each mode takes still passes, at any value.
    assert BenchCommand.of(pool=EXAMPLE_POOL, dry_run=True, gpu="h100", shape="tiny-qwen2").dry_run
    assert BenchCommand.of(pool=EXAMPLE_POOL, preset="tiny", out=tmp_path).preset == "tiny"


def test_a_dry_run_takes_only_the_settings_given_not_the_preset() -> None:
    """A dry run estimates a real selection: llama-3-8b, K from the pool size and the selector's
    candidate cut unless given (no preset: it refuses one)."""

    def dry(*args: str) -> dict[str, Any]:
        r = CliRunner().invoke(app, ["bench", "--dry-run", "--pool", str(EXAMPLE_POOL), "--json",
                                     *args])  # fmt: skip
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout[r.stdout.index("{") :])

    plain = dry()
    assert plain["model"] == "llama-3-8b" and plain["max_candidate_tokens"] == 256
    assert plain["candidates_per_prompt"] == choose_k(plain["pool_rows"])
    given = dry("--shape", "qwen2.5-0.5b", "--candidates", "5", "--max-candidate-tokens", "40")
    assert (given["model"], given["candidates_per_prompt"]) == ("qwen2.5-0.5b", 5)
    assert given["max_candidate_tokens"] == 40
    assert given["prompt_tokens_mean"] < plain["prompt_tokens_mean"]


DOCS = ("docs/BENCHMARKS.md", "benchmarks/README.md", "README.md", "benchmarks/bench_select.py")
PROGRAMS = ("python benchmarks/bench_select.py ", "selectllm bench ")


def documented_commands() -> list[tuple[str, tuple[str, ...]]]:
    """Every bench command written in the docs: (program, arguments), code blocks and inline."""
    import re
    import shlex

    found: set[tuple[str, tuple[str, ...]]] = set()
    for doc in DOCS:
        text = (REPO / doc).read_text("utf-8")
        fence = r"```[a-z]*\n(.*?)```"
        blocks = re.findall(fence, text, flags=re.S)
        lines = [ln for b in [text, *blocks] for ln in b.replace("\\\n", " ").splitlines()]
        inline = re.findall(r"`([^`]+)`", re.sub(fence, "", text, flags=re.S))
        lines += [m.replace("\n", " ") for m in inline]
        for line in lines:
            line = line.strip()
            for program in PROGRAMS:
                if line.startswith(program):
                    args = shlex.split(line[len(program) :].rstrip("`."), comments=True)
                    found.add((program.strip(), tuple(args)))
    return sorted(found)


def test_every_documented_bench_command_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    commands = documented_commands()
    assert len(commands) >= 10, commands
    seen = _recorded(monkeypatch)
    script = _script()
    for program, argv in commands:
        if program.startswith("python"):
            cmd, _ = script.options(list(argv))
        else:
            r = CliRunner().invoke(app, ["bench", *argv], env={"COLUMNS": "300"})
            assert r.exit_code == 0, (argv, r.output)
            cmd = seen[-1]
        assert cmd.bench.pool is not None and str(cmd.bench.pool) in argv, argv
