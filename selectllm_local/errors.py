"""Errors a user can cause and fix.

Anything raised as :class:`UserError` is caught by the CLI and printed as one paragraph with exit
code 2, never a traceback. Library code raises it with a message that names the file, line, field
or flag at fault and says what to do about it.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, configuration or environment (exit code 2)."""

    exit_code = 2


class MissingExtraError(UserError):
    """An optional dependency needed by the requested feature is not installed."""

    def __init__(self, package: str, feature: str, extra: str = "cpu") -> None:
        super().__init__(
            f"{feature} needs the Python package '{package}', which is not installed. "
            f"Install it with: pip install 'selectllm-local[{extra}]' (see README, 'Install')."
        )


def require(module: str, *, feature: str, extra: str = "cpu"):  # noqa: ANN201 - returns a module
    """Import ``module`` or raise a :class:`MissingExtraError` naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(module.split(".")[0], feature, extra) from exc
