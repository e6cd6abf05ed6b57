"""The Python API: each command as a keyword-only function returning the library's outcome.

``plan``, ``select``, ``baseline``, ``finetune`` and ``evaluate`` take the command's settings by
their config names (``pool``, ``budget``, ``run_dir``, ``model``, ``backend``, ``seed``, ``mode``,
``offline``...; every other setting as a further keyword), a ``config`` (a TOML file read as
``--config`` reads it, or the config object itself) or both: precedence is defaults < config <
keywords, as on the command line. They write the same run directory as the commands, and raise
:class:`~selectllm_local.errors.UserError` (never exit) for what a user can fix: a bad setting, a
missing optional package (the extra to install) or a full disk (the path; the run resumes).

Each wrapper only builds the config and calls the library function the command calls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from selectllm_local.config import (
    BaselineCommand,
    EvaluateCommand,
    FinetuneCommand,
    PlanConfig,
    SelectConfig,
    loader,
)
from selectllm_local.config.base import field_types, is_section
from selectllm_local.errors import UserError, expected_failure

if TYPE_CHECKING:
    from selectllm_local.baselines.run import BaselineOutcome
    from selectllm_local.evaluation.evaluate import EvalOutcome
    from selectllm_local.run.pipeline import PlanOutcome, SelectOutcome

__all__ = ["UserError", "baseline", "evaluate", "finetune", "plan", "select"]

T = TypeVar("T")
PathLike = str | Path


def _build(cls: type[T], command: str, config: PathLike | T | None, given: dict[str, Any]) -> T:
    """``cls`` from ``config`` (a TOML path or a ``cls``) overridden by the non-None ``given``."""
    values = {k: v for k, v in given.items() if v is not None}
    if isinstance(config, cls):
        return _replace(config, values)
    if config is not None and not isinstance(config, str | Path):
        raise UserError(
            f"config= takes a TOML file path or a {cls.__name__}, not {type(config).__name__}."
        )
    return loader.build(cls, loader.file_values(config, cls, command=command) | values)


def _replace(cfg: T, values: dict[str, Any]) -> T:
    """A copy of ``cfg`` with settings by name; a name shared by sections sets each of them."""
    cls = type(cfg)
    unknown = sorted(set(values) - set(loader.leaves(cls)))
    if unknown:
        raise UserError(f"Unknown setting(s) {', '.join(unknown)} for {cls.__name__}.")
    return _replaced(cfg, values)


def _replaced(obj: T, values: dict[str, Any]) -> T:
    """``obj`` with the settings in ``values`` set wherever they live, in nested sections too
    (the engine of ``evaluate``); every section a copy, even when unchanged."""
    types = field_types(type(obj))  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        if is_section(types[f.name]):
            changes[f.name] = _replaced(getattr(obj, f.name), values)
        elif f.name in values:
            changes[f.name] = values[f.name]
    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]


@contextmanager
def _user_errors(feature: str, folder: Path, progress: bool) -> Iterator[None]:
    """Progress lines on or off for the whole call; a missing package or a full disk as a
    ``UserError`` naming the extra or the path (what the command prints before exiting 2)."""
    from selectllm_local import progress as progress_lines

    progress_lines.configure(enabled=progress)
    try:
        yield
    except (ModuleNotFoundError, OSError) as exc:
        err = expected_failure(exc, feature=f"`{feature}`", folders=[folder])
        if err is None:
            raise
        raise err from exc


def plan(
    *,
    pool: PathLike | None = None,
    budget: int | None = None,
    run_dir: PathLike | None = None,
    config: PathLike | PlanConfig | None = None,
    seed: int | None = None,
    offline: bool | None = None,
    progress: bool = True,
    **settings: Any,
) -> PlanOutcome:
    """Embed, cluster and lay out the prompts for ``budget`` (no LLM), as ``selectllm plan``."""
    from selectllm_local.run.pipeline import plan_run

    given = dict(pool=pool, budget=budget, run_dir=run_dir, seed=seed, offline=offline)
    cfg = _build(PlanConfig, "plan", config, given | settings)
    with _user_errors("plan", cfg.resolved_run_dir, progress):
        return plan_run(cfg, progress=progress)


def select(
    *,
    pool: PathLike | None = None,
    budget: int | None = None,
    run_dir: PathLike | None = None,
    config: PathLike | SelectConfig | None = None,
    model: str | None = None,
    backend: str | None = None,
    mode: str | None = None,
    seed: int | None = None,
    offline: bool | None = None,
    progress: bool = True,
    **settings: Any,
) -> SelectOutcome:
    """Let the local LLM ``model`` choose exactly ``budget`` instructions, as ``selectllm select``
    (resumes on the same ``run_dir``)."""
    from selectllm_local.run.pipeline import select_run

    given = dict(pool=pool, budget=budget, run_dir=run_dir, model=model, backend=backend,
                 mode=mode, seed=seed, offline=offline)  # fmt: skip
    cfg = _build(SelectConfig, "select", config, given | settings)
    with _user_errors("select", cfg.plan.resolved_run_dir, progress):
        return select_run(cfg, progress=progress)


def baseline(
    *,
    name: str | None = None,
    pool: PathLike | None = None,
    budget: int | None = None,
    run_dir: PathLike | None = None,
    config: PathLike | BaselineCommand | None = None,
    model: str | None = None,
    backend: str | None = None,
    scorer_model: str | None = None,
    seed: int | None = None,
    offline: bool | None = None,
    progress: bool = True,
    **settings: Any,
) -> BaselineOutcome:
    """Select with baseline ``name`` (random, length, kcenter, ifd...) at the same budget, as
    ``selectllm baseline NAME`` (written beside select's selection in ``run_dir``)."""
    from selectllm_local.baselines.run import baseline_command

    given = dict(name=name, pool=pool, budget=budget, run_dir=run_dir, model=model,
                 backend=backend, scorer_model=scorer_model, seed=seed, offline=offline)  # fmt: skip
    cfg = _build(BaselineCommand, "baseline", config, given | settings)
    with _user_errors(f"baseline {cfg.name}", cfg.plan.resolved_run_dir, progress):
        return baseline_command(cfg, progress=progress, flags=False)


def finetune(
    *,
    selected: PathLike | None = None,
    base_model: PathLike | None = None,
    out: PathLike | None = None,
    config: PathLike | FinetuneCommand | None = None,
    subprocess: bool | None = None,
    seed: int | None = None,
    progress: bool = True,
    **settings: Any,
) -> Path:
    """LoRA / QLoRA fine-tune ``base_model`` on ``selected`` (a selected.jsonl) into ``out``, as
    ``selectllm finetune``; returns the adapter folder (``out/adapter``)."""
    from selectllm_local.run.preflight import check_writable
    from selectllm_local.training.finetune import finetune_run

    given = dict(selected=selected, base_model=base_model, out=out, subprocess=subprocess,
                 seed=seed)  # fmt: skip
    cfg = _build(FinetuneCommand, "finetune", config, given | settings)
    with _user_errors("finetune", cfg.out, progress):
        check_writable(cfg.out, flag="out")  # before the model is fetched or trained
        return finetune_run(
            cfg.selected,
            base_model=cfg.base_model,
            out_dir=cfg.out,
            config=cfg.finetune,
            subprocess=cfg.subprocess,
            progress=progress,
        )


def evaluate(
    *,
    test_set: PathLike | None = None,
    base_model: PathLike | None = None,
    out: PathLike | None = None,
    adapter: PathLike | None = None,
    config: PathLike | EvaluateCommand | None = None,
    backend: str | None = None,
    seed: int | None = None,
    progress: bool = True,
    **settings: Any,
) -> EvalOutcome:
    """Answer ``test_set`` with ``base_model`` (+ ``adapter``) and score Rouge-L F1 and embedding
    cosine into ``out``, as ``selectllm evaluate``."""
    from selectllm_local.evaluation.evaluate import evaluate_run
    from selectllm_local.run.preflight import check_writable

    given = dict(test_set=test_set, base_model=base_model, out=out, adapter=adapter,
                 backend=backend, seed=seed)  # fmt: skip
    cfg = _build(EvaluateCommand, "evaluate", config, given | settings)
    with _user_errors("evaluate", cfg.out, progress):
        check_writable(cfg.out, flag="out")  # before the model is fetched or loaded
        return evaluate_run(
            cfg.test_set,
            base_model=cfg.base_model,
            adapter=cfg.adapter,
            out_dir=cfg.out,
            config=cfg.evaluate,
            progress=progress,
        )


COMMANDS: dict[str, Callable[..., Any]] = {
    "plan": plan,
    "select": select,
    "baseline": baseline,
    "finetune": finetune,
    "evaluate": evaluate,
}
