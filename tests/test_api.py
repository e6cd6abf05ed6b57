"""The Python API (issue 20): ``from selectllm_local import plan, select, ...``.

The package exposes the API lazily (importing it loads nothing heavy), no submodule shadows an API
name, settings come from keywords, a config file or a config object (keywords winning), errors a
user can fix raise ``UserError``, and the README's example runs as written (real embedder, real
SmolLM2 on vLLM) from a scratch folder.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import selectllm_local
from selectllm_local import api
from selectllm_local.config import PlanConfig
from selectllm_local.errors import UserError
from tests.helpers import EXAMPLE_POOL, HANG_GUARD, REPO, n_lines, requires_vllm, small_pool

API_NAMES = ("plan", "select", "baseline", "finetune", "evaluate")


def test_importing_the_package_loads_no_api_and_the_names_resolve_in_a_fresh_process() -> None:
    code = (
        "import sys, selectllm_local\n"
        "assert 'selectllm_local.api' not in sys.modules\n"
        "heavy = [m for m in ('numpy', 'torch', 'vllm', 'faiss') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from selectllm_local import select, plan, baseline, finetune, evaluate, UserError\n"
        "import selectllm_local.api as api\n"
        "assert select is api.select and evaluate is api.evaluate\n"
        "print(sorted(selectllm_local.__all__))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(API_NAMES) <= set(eval(proc.stdout))  # noqa: S307 - our own printed list
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        selectllm_local.nonsense  # noqa: B018


def test_no_submodule_shadows_an_api_name() -> None:
    names = [m.name for m in pkgutil.walk_packages(selectllm_local.__path__, "selectllm_local.")]
    assert not {n.split(".")[1] for n in names} & set(API_NAMES)
    for name in names:
        if name.endswith("__main__"):
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:  # an optional extra (ray, ...) not installed here
            assert not (exc.name or "").startswith("selectllm_local"), exc
    for name in API_NAMES:
        assert getattr(selectllm_local, name) is getattr(api, name), name
        assert callable(getattr(selectllm_local, name))


@pytest.mark.parametrize("name", API_NAMES)
def test_every_function_is_keyword_only(name: str) -> None:
    import inspect

    params = inspect.signature(getattr(api, name)).parameters.values()
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params)
    with pytest.raises(TypeError):
        getattr(api, name)("positional")


def test_bad_settings_raise_user_error_not_exit(tmp_path: Path) -> None:
    pool = small_pool(tmp_path, 30)
    with pytest.raises(UserError, match="budget"):
        api.plan(pool=pool, budget=0, run_dir=tmp_path / "r")
    with pytest.raises(UserError, match="budget"):
        api.select(pool=pool, run_dir=tmp_path / "r", model="m")  # budget missing
    with pytest.raises(UserError, match="bogus"):
        api.plan(pool=pool, budget=3, bogus=1)
    with pytest.raises(UserError, match="bogus"):
        api.plan(config=PlanConfig(pool=pool, budget=3), bogus=1)
    with pytest.raises(UserError, match="does not exist"):
        api.plan(config=tmp_path / "missing.toml")
    with pytest.raises(UserError, match="config="):
        api.plan(config={"budget": 3})  # type: ignore[arg-type]
    with pytest.raises(UserError, match="mode"):
        api.select(pool=pool, budget=3, mode="telepathy", model="m")


def test_config_file_then_keywords_then_object_with_overrides(tmp_path: Path) -> None:
    pool = small_pool(tmp_path, 40)
    toml = tmp_path / "plan.toml"
    toml.write_text(f'[plan]\npool = "{pool}"\nbudget = 6\nn_clusters = 4\nseed = 3\n', "utf-8")
    run = tmp_path / "from-file"
    first = api.plan(config=toml, run_dir=run, budget=8, progress=False)
    assert first.run_dir == run and run.is_dir()
    assert (first.config.budget, first.config.n_clusters, first.config.seed) == (8, 4, 3)
    assert {len(s.candidates) for s in first.plan.subsets} == {4}  # the file's K

    given = PlanConfig(pool=pool, budget=5, run_dir=tmp_path / "from-object", n_clusters=5)
    second = api.plan(config=given, budget=7, progress=False)
    assert (second.config.budget, second.config.n_clusters) == (7, 5)
    assert given.budget == 5  # the caller's object is left as it was
    assert {len(s.candidates) for s in second.plan.subsets} == {5}


def test_a_shared_key_sets_every_section_of_a_config_object(tmp_path: Path) -> None:
    from selectllm_local.config import SelectConfig

    given = SelectConfig.of(pool=tmp_path / "p.jsonl", budget=4, model="m")
    changed = api._replace(given, {"seed": 9, "model": "other"})
    assert (changed.plan.seed, changed.selector.seed, changed.engine.seed) == (9, 9, 9)
    assert changed.engine.model == "other" and given.engine.model == "m"
    assert dataclasses.asdict(given)["plan"]["seed"] == 0


def test_a_setting_of_a_nested_section_reaches_it(tmp_path: Path) -> None:
    """``evaluate(config=<EvaluateCommand>, backend=...)``: the engine inside [evaluate] is set."""
    from selectllm_local.config import EvaluateCommand

    given = EvaluateCommand.of(test_set=tmp_path / "t.jsonl", base_model="b", out=tmp_path / "o")
    changed = api._replace(given, {"backend": "transformers", "batch_size": 3, "limit": 5})
    assert (changed.evaluate.engine.backend, changed.evaluate.engine.batch_size) == (
        "transformers",
        3,
    )
    assert changed.evaluate.limit == 5 and given.evaluate.engine.backend == "auto"


def _readme_example() -> str:
    readme = (REPO / "README.md").read_text("utf-8")
    section = readme[readme.index("## Python API") :]
    (code,) = re.findall(r"```python\n(.*?)```", section[: section.index("\n## ", 3)], re.S)
    return code


@requires_vllm
@pytest.mark.slow
def test_the_readme_example_runs(tmp_path: Path, smollm2_dir: Path) -> None:
    code = _readme_example()
    shipped = "examples/dolly_sample_1500.jsonl"
    assert shipped in code and "from selectllm_local import" in code
    code = code.replace(shipped, str(EXAMPLE_POOL))  # run from a scratch folder
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    run = tmp_path / "runs" / "notebook"
    pool_rows = [json.loads(line) for line in (tmp_path / "dolly_100.jsonl").open()]
    chosen = [json.loads(line) for line in (run / "selected.jsonl").open()]
    budget = int(re.search(r"budget=(\d+)", code).group(1))  # type: ignore[union-attr]
    assert len(chosen) == budget
    instructions = {r["instruction"] for r in pool_rows}
    assert all(c["instruction"] in instructions for c in chosen)
    (random_file,) = [p for p in run.rglob("selected.jsonl") if "random" in str(p)]
    assert n_lines(random_file) == budget
    assert "clusters" in proc.stdout and "selected [" in proc.stdout


@pytest.mark.parametrize(
    ("raised", "message"),
    [
        (OSError(28, "No space left on device"), "run-here"),  # names the run directory
        (ModuleNotFoundError("No module named 'vllm'", name="vllm"), "vllm"),  # names the extra
    ],
)
def test_a_full_disk_or_a_missing_extra_becomes_a_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raised: Exception, message: str
) -> None:
    from selectllm_local.run import pipeline

    def fail(*args: object, **kwargs: object) -> None:
        raise raised

    monkeypatch.setattr(pipeline, "plan_run", fail)  # the conversion is what is tested
    with pytest.raises(UserError, match=message) as caught:
        api.plan(pool=small_pool(tmp_path, 10), budget=2, run_dir=tmp_path / "run-here")
    assert caught.value.__cause__ is raised


def test_a_bug_is_not_disguised_as_a_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selectllm_local.run import pipeline

    def fail(*args: object, **kwargs: object) -> None:
        raise ModuleNotFoundError(
            "No module named 'selectllm_local.gone'", name="selectllm_local.gone"
        )

    monkeypatch.setattr(pipeline, "plan_run", fail)
    with pytest.raises(ModuleNotFoundError):
        api.plan(pool=small_pool(tmp_path, 10), budget=2, run_dir=tmp_path / "r")
