"""A core install (``pip install selectllm-local``, no extras): every command works or exits 2
naming the extra to install, never a traceback.

The core install is imitated here: a ``sitecustomize`` on PYTHONPATH hides every module of the
packages the extras bring (the dependency closure of ``[ml]``, ``[cpu]``, ``[gpu]`` and ``[ray]``
minus that of the core dependencies, read from pyproject.toml and the installed metadata), so
``import torch`` fails in the subprocess and in everything it starts, as on a machine without it.
Each registered command (read from the typer app, not listed by hand) runs with arguments that
reach its heavy work.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import HANG_GUARD, REPO, small_pool

CLI = [sys.executable, "-m", "selectllm_local"]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]
STACKS = ("ml", "cpu", "gpu", "ray")  # the extras a core install lacks ("dev" is for tests)
# The commands that cannot do their work without an extra: they must exit 2 naming it (if one
# exits 0, the packages were not hidden and the test would prove nothing).
NEED_AN_EXTRA = {"plan", "select", "finetune", "evaluate", "experiment", "report", "bench",
                 "random-model"}  # fmt: skip


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(requirements: list[str]) -> set[str]:
    """The installed distributions ``requirements`` pull in, recursively (our extras expanded)."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = _norm(req.name)
        if name == "selectllm-local":
            todo += [
                Requirement(r) for e in req.extras for r in PYPROJECT["optional-dependencies"][e]
            ]
            continue
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # not installed here (the other stack's packages): nothing to hide
        seen.add(name)
        for r in map(Requirement, dist.requires or []):
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r)
    return seen


@functools.cache
def hidden_modules() -> list[str]:
    """Top-level modules of the distributions only the extras bring."""
    import importlib.metadata as md

    extras = [r for e in STACKS for r in PYPROJECT["optional-dependencies"][e]]
    only_extras = _closure(extras) - _closure(PYPROJECT["dependencies"])
    return sorted(
        module
        for module, dists in md.packages_distributions().items()
        if module.isidentifier() and any(_norm(d) in only_extras for d in dists)
    )


HIDE = """import sys
for _name in {names!r}:
    sys.modules.setdefault(_name, None)  # import fails: ModuleNotFoundError, as when not installed
"""


@pytest.fixture(scope="module")
def core_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("core-site")
    (site / "sitecustomize.py").write_text(HIDE.format(names=hidden_modules()), "utf-8")
    path = os.pathsep.join(p for p in (str(site), str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "COLUMNS": "200"}


def run_core(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=env, timeout=HANG_GUARD, cwd=REPO
    )


def registered_commands() -> list[str]:
    """Every command of the app as typed after ``selectllm`` (``models``, ``models fetch``...)."""
    import typer.main

    from selectllm_local.cli import app

    found: list[str] = []

    def walk(group: object, prefix: str) -> None:
        for name, cmd in getattr(group, "commands", {}).items():
            path = f"{prefix}{name}"
            if not hasattr(cmd, "commands") or getattr(cmd, "invoke_without_command", False):
                found.append(path)
            walk(cmd, path + " ")

    walk(typer.main.get_command(app), "")
    return found


def test_the_core_environment_lacks_the_extras(core_env: dict[str, str]) -> None:
    code = (
        "import importlib.util as u, numpy, pyarrow, typer, rich, jinja2\n"
        "for m in ('torch', 'transformers', 'vllm', 'faiss', 'sentence_transformers', 'ray'):\n"
        "    assert u.find_spec(m) is None, m\n"
        "    try:\n"
        "        __import__(m)\n"
        "    except ModuleNotFoundError:\n"
        "        pass\n"
        "    else:\n"
        "        raise AssertionError(m)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=core_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_extras_table_matches_pyproject() -> None:
    """``errors.OPTIONAL_PACKAGES`` (module -> extra) names each package of the extras once."""
    from packaging.requirements import Requirement

    from selectllm_local.errors import OPTIONAL_PACKAGES, STACK_EXTRAS

    declared: dict[str, set[str]] = {}
    for extra in STACKS:
        for spec in PYPROJECT["optional-dependencies"][extra]:
            name = _norm(Requirement(spec).name)
            if name != "selectllm-local":
                module = name.removesuffix("-cpu").replace("-", "_")
                declared.setdefault(module, set()).add(extra)
    assert set(OPTIONAL_PACKAGES) == set(declared)
    for module, extra in OPTIONAL_PACKAGES.items():
        where = declared[module]
        assert extra in where or (extra in STACK_EXTRAS and where <= set(STACK_EXTRAS)), module


@pytest.fixture(scope="module")
def inputs(
    tmp_path_factory: pytest.TempPathFactory, core_env: dict[str, str], smollm2_dir: Path
) -> dict[str, Path]:
    """A small pool, a model folder, and two finished selections made on the core install."""
    tmp = tmp_path_factory.mktemp("core-inputs")
    pool = small_pool(tmp, 40)
    model = tmp / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model / "model.safetensors").write_bytes(b"")  # found; loading it needs torch
    runs = {}
    for seed in ("0", "1"):  # the random baseline needs no extra
        run = tmp / f"random{seed}"
        r = run_core(core_env, "baseline", "random", str(pool), "--budget", "5", "--seed", seed,
                     "--run-dir", str(run))  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        runs[seed] = run / "baselines" / f"random-b5-s{seed}"
    return {
        "pool": pool,
        "model": model,
        "a": runs["0"],
        "b": runs["1"],
        "run": runs["0"].parents[1],
    }


# Arguments that take each command to its heavy work (tmp: a fresh folder for its outputs).
ARGS: dict[str, Callable[[dict[str, Path], Path], list[str]]] = {
    "plan": lambda i, t: [str(i["pool"]), "--budget", "5", "--run-dir", str(t)],
    "select": lambda i, t: [str(i["pool"]), "--budget", "5", "--model", "fake", "--backend",
                            "fake", "--run-dir", str(t)],
    "baseline": lambda i, t: ["kcenter", str(i["pool"]), "--budget", "5", "--run-dir", str(t)],
    "split": lambda i, t: [str(i["pool"]), "--test", "5", "--out", str(t)],
    "compare": lambda i, t: [str(i["a"]), str(i["b"])],
    "finetune": lambda i, t: [str(i["pool"]), "--base-model", str(i["model"]), "--out", str(t)],
    "evaluate": lambda i, t: ["examples/testsets/dolly", "--base-model", str(i["model"]), "--out",
                              str(t), "--limit", "2"],
    "experiment": lambda i, t: ["configs/tiny_ci.toml", "--run-dir", str(t)],
    "report": lambda i, t: [str(i["run"]), "--out", str(t / "report.html")],
    "bench": lambda i, t: ["--pool", str(i["pool"]), "--out", str(t)],
    "random-model": lambda i, t: ["tiny-qwen2", str(t)],
    "models": lambda i, t: [],
    "models fetch": lambda i, t: ["smollm2-135m-instruct"],  # cached (the smollm2_dir fixture)
}  # fmt: skip


def test_every_command_is_covered() -> None:
    assert sorted(ARGS) == sorted(registered_commands())
    assert NEED_AN_EXTRA <= set(ARGS)


@pytest.mark.parametrize("command", registered_commands())
def test_command_on_a_core_install_works_or_names_the_extra(
    command: str, core_env: dict[str, str], inputs: dict[str, Path], tmp_path: Path
) -> None:
    assert command in ARGS, f"give `selectllm {command}` arguments in ARGS"
    r = run_core(core_env, *command.split(), *ARGS[command](inputs, tmp_path / "out"))
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out[-4000:]
    assert r.returncode in (0, 2), out[-4000:]
    if command in NEED_AN_EXTRA:
        assert r.returncode == 2, out[-4000:]
    if r.returncode == 2:
        message = " ".join(r.stderr.split())
        assert "pip install 'selectllm-local[" in message, message[-2000:]
        assert "is not installed" in message, message[-2000:]


def test_the_rule_leaves_bugs_visible() -> None:
    """Only optional packages and disk failures become exit 2; anything else stays a traceback."""
    import errno

    from selectllm_local.errors import expected_failure

    def missing_module(name: str) -> ModuleNotFoundError:
        return ModuleNotFoundError(f"No module named '{name}'", name=name)

    folder = Path("/runs/a")
    assert expected_failure(missing_module("selectllm_local.nope"), feature="x") is None
    assert expected_failure(missing_module("numpy"), feature="x") is None  # core: a broken install
    assert "[ray]" in str(expected_failure(missing_module("ray.data"), feature="--ray"))
    assert expected_failure(OSError(errno.EIO, "I/O error"), feature="x", folders=[folder]) is None
    assert expected_failure(ValueError("bug"), feature="x") is None
    full = expected_failure(OSError(errno.ENOSPC, "No space"), feature="x", folders=[folder])
    assert full is not None and str(folder) in str(full)
    temp = OSError(errno.EACCES, "Permission denied", "/runs/a/.selected.jsonl.k2j1.tmp")
    assert "/runs/a cannot be written or read" in str(expected_failure(temp, feature="x"))
