"""One loader for every TOML file: ``--config`` files and experiment files use the same tables.

A file holds tables named after the sections (``[plan]``, ``[selector]``, ``[engine]``,
``[baseline]``, ``[finetune]``, ``[evaluate]``), a table named after the command (``[select]``:
any of its settings) and, at the top level, plain keys that mean the flag of the same name.
A key means what its flag means, so a key shared by two sections of a command (``seed``,
``device``) sets both, exactly as the flag does. Unknown keys and tables are errors naming the
key and the file; tables of other commands' sections are ignored, so one file can serve
``plan``, ``select`` and ``experiment``. Precedence: defaults < config file < flags the user gave.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from selectllm_local.config.base import (
    check_keys,
    field_types,
    flag_keys,
    flag_name,
    is_section,
)
from selectllm_local.config.sections import EngineConfig, PlanConfig, SelectorConfig
from selectllm_local.config.training import BaselineConfig, EvaluateConfig, FinetuneConfig
from selectllm_local.errors import UserError

T = TypeVar("T")

SECTIONS: dict[str, type] = {
    c.SECTION: c
    for c in (
        PlanConfig,
        SelectorConfig,
        EngineConfig,
        BaselineConfig,
        FinetuneConfig,
        EvaluateConfig,
    )
}
# Tables that only the experiment reads; any other command skips them.
OWN_TABLES = ("experiment",)
# Tables of earlier versions, with what replaced them.
RENAMED = {
    "select": "[selector] (mode, temperature, ...) and [engine] (model, backend, dtype, ...)",
    "baselines": "[baseline] (keys: scorer_model, band, scorer_batch_size, diversity_sample)",
}
Leaf = tuple[type, dataclasses.Field]  # (the class that declares the setting, its field)


def read_toml(
    path: Path | str, *, what: str = "Config file", flag: str = "--config"
) -> dict[str, Any]:
    """Parse a TOML file into a table with ``-`` in keys read as ``_``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist. Check the {flag} path.")
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} is not valid TOML: {exc}. Fix the file and retry.") from exc
    return _normalise(data)


def _normalise(table: dict[str, Any]) -> dict[str, Any]:
    return {
        k.replace("-", "_"): _normalise(v) if isinstance(v, dict) and k != "extra" else v
        for k, v in table.items()
    }


def leaves(cls: type, *, offered: bool = False) -> dict[str, list[Leaf]]:
    """Setting name -> where it lives: ``(declaring class, field)`` for each section having it
    (sections nested in sections too: the engine of ``[evaluate]``).

    ``offered``: without the settings of nested sections that a class declares it does not take
    (its ``NOT_TAKEN``, e.g. the evaluation's engine has no model and no Ray): the command-line
    flags. They stay settings, so a value given in a file or in code reaches the section, which
    refuses it with the reason.
    """
    out: dict[str, list[Leaf]] = {}
    types = field_types(cls)
    not_taken: Mapping[str, Any] = getattr(cls, "NOT_TAKEN", {}) if offered else {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if is_section(types[f.name]):
            for name, where in leaves(types[f.name], offered=offered).items():
                if name not in not_taken.get(f.name, ()):
                    out.setdefault(name, []).extend(where)
        else:
            out.setdefault(f.name, []).append((cls, f))
    return out


def _flat(cls: type, table: Mapping[str, Any]) -> dict[str, Any]:
    """A checked section table as settings by name (a nested section's table opened up)."""
    types = field_types(cls)
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key in types and is_section(types[key]) and isinstance(value, Mapping):
            out.update(_flat(types[key], value))
        else:
            out[key] = value
    return out


def _open_nested(cls: type | None, table: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """A command's table with the tables of sections nested in its section checked and opened."""
    types = field_types(cls) if cls is not None else {}
    out = dict(table)
    for key, value in table.items():
        if key in types and is_section(types[key]) and isinstance(value, Mapping):
            check_keys(types[key], value, where=f"{where[:-1]}.{key}]")
            del out[key]
            out.update(value)
    return out


def section_table(cls: type, table: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """A file's table for section ``cls``, checked (unknown keys named; moved keys handled)."""
    if hasattr(cls, "table"):  # a section with keys of earlier versions (``EvaluateConfig``)
        return cls.table(table, where=where)
    check_keys(cls, table, where=where)
    return dict(table)


def sections_of(cls: type) -> set[str]:
    """Config-file tables whose keys ``cls`` takes (its own, or those of its nested sections)."""
    own = getattr(cls, "SECTION", "")
    types = field_types(cls)
    nested = {types[f.name].SECTION for f in dataclasses.fields(cls) if is_section(types[f.name])}  # type: ignore[arg-type]
    return nested | ({own} if own else set())


def file_values(path: Path | str | None, cls: type, *, command: str) -> dict[str, Any]:
    """The settings a config file gives command ``command`` (built from ``cls``), by name."""
    if path is None:
        return {}
    data = read_toml(path)
    known = leaves(cls)
    used = sections_of(cls)
    # A command whose subject is a config file (``experiment``) takes the --config file as it.
    out: dict[str, Any] = {"config": Path(path)} if "config" in known else {}
    for key, value in data.items():
        if not isinstance(value, dict):
            if key not in known:
                raise UserError(
                    f"Config file {path}: unknown key '{key}' for `selectllm {command}`. "
                    f"Known keys: {', '.join(sorted(known))} (or tables {', '.join(sorted(SECTIONS))})."
                )
            out[key] = value
        elif key in OWN_TABLES:
            continue
        elif key == command:  # any setting of the command (``[evaluate.engine]`` opened up)
            where = f"Config file {path}: [{key}]"
            value = _open_nested(SECTIONS.get(key), value, where=where)
            hints = flag_keys(f for where in known.values() for _, f in where)
            check_keys(known, value, where=where, hints=hints)
            out.update(value)
        elif key in SECTIONS:
            table = section_table(SECTIONS[key], value, where=f"Config file {path}: [{key}]")
            if key in used:
                out.update(_flat(SECTIONS[key], table))
        elif key in RENAMED:
            raise UserError(f"Config file {path}: the table [{key}] is now {RENAMED[key]}.")
        else:
            raise UserError(
                f"Config file {path}: unknown table [{key}]. Known tables: "
                f"{', '.join(sorted([*SECTIONS, *OWN_TABLES, command]))}."
            )
    return out


def build(cls: type[T], values: Mapping[str, Any]) -> T:
    """``cls`` (a section, or a command's composition of sections) from settings by name.

    A name shared by several sections sets each of them; a required setting that is missing is
    an error naming its flag and its config key. A command with presets (``BenchCommand``) lays
    the named preset under ``values`` (its classmethod ``layered``): defaults < preset < file <
    flags, for the CLI and for scripts alike.
    """
    known = leaves(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(f"Unknown setting(s) {', '.join(unknown)} for {cls.__name__}.")
    layer = getattr(cls, "layered", None)  # a command with presets lays one under the values
    return _build(cls, layer(values) if layer is not None else values)


def _build(cls: type[T], values: Mapping[str, Any]) -> T:
    types = field_types(cls)  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if is_section(types[f.name]):
            kwargs[f.name] = _build(types[f.name], values)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    _require(cls, kwargs)
    return cls(**kwargs)


def _require(cls: type, given: Mapping[str, Any]) -> None:
    missing = [
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name not in given
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        flags = ", ".join(flag_name(cls, m) for m in missing)
        raise UserError(
            f"Missing {flags}: give it on the command line or as '{missing[0]}' in the --config file."
        )
