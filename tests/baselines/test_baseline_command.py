"""``selectllm baseline`` and the API's ``baseline`` check the same things, in the same order,
before the pool is loaded, embedded or scored (``baselines.run.baseline_command``): an IFD
baseline needs an engine model (any engine does), then its backend installed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from selectllm_local import baseline
from selectllm_local.cli import app
from selectllm_local.errors import UserError
from tests.helpers import small_pool


def _both(
    tmp_path: Path, name: str, *engine: str, **api_engine: str
) -> tuple[str, str, list[Path]]:
    """(CLI output, API error) of one baseline run, and what either wrote into its run dir."""
    pool = small_pool(tmp_path, 12)
    cli_dir, api_dir = tmp_path / f"cli-{name}", tmp_path / f"api-{name}"
    r = CliRunner().invoke(
        app, ["baseline", name, str(pool), "--budget", "3", "--run-dir", str(cli_dir), *engine],
        env={"COLUMNS": "300"},
    )  # fmt: skip
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    with pytest.raises(UserError) as err:
        baseline(name=name, pool=pool, budget=3, run_dir=api_dir, progress=False, **api_engine)
    written = [p for d in (cli_dir, api_dir) if d.exists() for p in d.rglob("*") if p.is_file()]
    return " ".join(r.output.split()), " ".join(str(err.value).split()), written


@pytest.mark.parametrize("name", ["ifd", "cluster-ifd"])
def test_an_ifd_baseline_without_a_model_stops_before_any_work(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed: the model is named first
    cli, api, written = _both(tmp_path, name, "--backend", "vllm", backend="vllm")
    assert f"Baseline '{name}' scores the pool with the selection engine's model" in cli
    assert "give --model (" in cli and "optionally --backend" in cli, cli
    assert "give model (" in api and "optionally backend" in api, api
    assert written == []  # the pool was neither loaded nor embedded


def test_an_ifd_baseline_needs_its_backend_installed_in_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # find_spec("vllm") is None: as if absent
    engine = ("--model", "smollm2-135m-instruct", "--backend", "vllm")
    cli, api, written = _both(
        tmp_path, "cluster-ifd", *engine, model="smollm2-135m-instruct", backend="vllm"
    )
    for text in (cli, api):
        assert "--backend vllm needs the vllm package, which is not installed" in text, text
    assert written == []
