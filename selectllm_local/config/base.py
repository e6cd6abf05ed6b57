"""The machinery every configuration section shares: field options, docstrings, errors, JSON.

A section is a dataclass whose fields are the settings, each with a docstring under it (the help
text of its flag) and, where the flag is not simply ``--field-name``, the flag spellings given once
with :func:`setting`. Nothing else maps flags to fields: the CLI builds its options from the fields
and the config loader checks file keys against them.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import sys
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from selectllm_local.config.vocab import BACKEND_NAMES as BACKEND_NAMES  # re-exported
from selectllm_local.config.vocab import BackendName as BackendName  # re-exported
from selectllm_local.config.vocab import vocabulary
from selectllm_local.errors import UserError

REQUIRED: Any = dataclasses.MISSING  # a setting with no default: a flag or config key must give it


def setting(
    default: Any = REQUIRED,
    *flags: str,
    default_factory: Any = dataclasses.MISSING,
    cli: bool = True,
    argument: bool = False,
) -> Any:
    """A dataclass field with its command-line spellings (``flags``; default ``--field-name``).

    ``argument=True`` makes it a positional argument; ``cli=False`` keeps it off the command line
    (it can still be set in a config file or in code).
    """
    meta = {"flags": flags, "cli": cli, "argument": argument}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flags_of(f: dataclasses.Field) -> tuple[str, ...]:
    """The option spellings of a field, first the one messages use."""
    given = tuple(f.metadata.get("flags", ()))
    return given or ("--" + f.name.replace("_", "-"),)


def flag_name(cls: type, name: str) -> str:
    """How a message names field ``name`` of ``cls`` on the command line (``--k``, ``POOL``)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.metadata.get("argument"):
                return name.upper()
            return flags_of(f)[0].split("/")[0]
    return "--" + name.replace("_", "-")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field (``ast``: Python keeps no attribute docstrings)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_module_docs(klass.__module__).get(klass.__qualname__, {}))
    return docs


@functools.cache
def _module_docs(module: str) -> dict[str, dict[str, str]]:
    """Field docstrings of every class in a module, parsed once (``--help`` must stay fast)."""
    try:
        tree = ast.parse(Path(inspect.getfile(sys.modules[module])).read_text("utf-8"))
    except (OSError, TypeError, KeyError, SyntaxError):  # pragma: no cover - source not shipped
        return {}
    out: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        docs = out.setdefault(node.name, {})
        for stmt, nxt in zip(node.body, node.body[1:], strict=False):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return out


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations (the modules use ``from __future__ import annotations``)."""
    return typing.get_type_hints(cls)


def is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


class Section:
    """Base of the config sections: errors that name the flag and the config key, JSON export."""

    SECTION: ClassVar[str] = ""
    """The table name of this section in config files (``[plan]``, ``[engine]``...)."""

    def _bad(self, name: str, message: str) -> UserError:
        where = f"{self.SECTION}.{name}" if self.SECTION else name
        return UserError(f"{flag_name(type(self), name)} ({where} in a config file) {message}")

    def _at_least(self, name: str, low: float) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
            raise self._bad(name, f"must be a number of at least {low:g} (got {value!r}).")

    def _one_of(self, name: str, allowed: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in allowed:
            raise self._bad(name, f"must be one of {', '.join(allowed)} (got {value!r}).")

    def _check_vocabularies(self) -> None:
        """Check every field annotated with a ``Literal`` (``config/vocab.py``) against it."""
        types: dict[str, Any] = field_types(type(self))  # type: ignore[arg-type]
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            words = vocabulary(types[f.name])
            if words and getattr(self, f.name) is not None:
                self._one_of(f.name, words)

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


def to_jsonable(obj: Any) -> dict[str, Any]:
    """A dataclass as JSON-ready values (paths as strings, nested sections as tables)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            out[f.name] = to_jsonable(v)
        elif isinstance(v, Path):
            out[f.name] = str(v)
        elif isinstance(v, list | tuple):
            out[f.name] = [str(x) if isinstance(x, Path) else x for x in v]
        else:
            out[f.name] = v
    return out


def as_path(value: Any) -> Path | None:
    return None if value is None else Path(value)


def check_keys(
    cls: type | Iterable[str],
    table: Mapping[str, Any],
    *,
    where: str,
    hints: Mapping[str, str] | None = None,
) -> None:
    """Refuse keys that are not fields of ``cls`` (or not in a list of names), naming them."""
    names = (
        [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        if isinstance(cls, type)
        else list(cls)
    )
    known = sorted(names)
    unknown = sorted(set(table) - set(known))
    if unknown:
        hints = hints or (flag_keys(dataclasses.fields(cls)) if isinstance(cls, type) else {})  # type: ignore[arg-type]
        hint = "".join(
            f" The key of --{k.replace('_', '-')} is {hints[k]}." for k in unknown if k in hints
        )
        raise UserError(
            f"{where} has unknown key(s): {', '.join(unknown)}.{hint} Known keys: {', '.join(known)}."
        )


def flag_keys(fields: Iterable[dataclasses.Field]) -> dict[str, str]:
    """Flags spelled unlike their field (``--k``) as would-be keys -> the real key."""
    out = {}
    for f in fields:
        for flag in flags_of(f):
            key = flag.split("/")[0].removeprefix("--").replace("-", "_")
            if key != f.name and flag.startswith("--"):  # long flags only (not -n)
                out[key] = f.name
    return out
