"""Engine start-up failures with a known cause outside our code, explained in one paragraph.

Why: an engine that cannot start raises from deep inside vLLM, torch.distributed or CUDA, and the
traceback names neither the cause nor the fix. The failures below come from the machine, not from
the user's input or from a bug, so each is matched on its message and re-raised as a ``UserError``
(exit 2, no traceback) that says what happened and what to do. Anything unmatched is re-raised
unchanged: an unknown failure keeps its traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from selectllm_local.errors import UserError


@dataclass(frozen=True)
class KnownFailure:
    """A substring of the engine's error message, and the paragraph that explains it."""

    marker: str
    explanation: str


KNOWN_FAILURES: tuple[KnownFailure, ...] = (
    KnownFailure(
        "Unable to find interface for",
        "The {backend} engine could not start: its process group (torch.distributed) found no "
        "usable network interface for 127.0.0.1 ({message}). This happens in a network namespace "
        "whose loopback device is down (for example `unshare -n`, or a sandbox without network). "
        "Bring loopback up in that namespace (`ip link set lo up`, e.g. `unshare -rn sh -c 'ip "
        "link set lo up && selectllm ...'`), run outside the isolated namespace, or use "
        "--backend transformers, which needs no process group. No network traffic leaves the "
        "machine either way: the engine only talks to itself over loopback.",
    ),
)


def _messages(exc: BaseException) -> list[str]:
    """The messages of ``exc`` and of the exceptions it was raised from."""
    out, seen = [], set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        out.append(str(cur))
        cur = cur.__cause__ or cur.__context__
    return out


def explain(exc: BaseException, backend: str) -> UserError | None:
    """The ``UserError`` for a known start-up failure, or None when ``exc`` is not one."""
    for text in _messages(exc):
        for known in KNOWN_FAILURES:
            if known.marker in text:
                line = next((ln for ln in text.splitlines() if known.marker in ln), known.marker)
                message = line.strip()[-200:].strip("[] ")
                return UserError(known.explanation.format(backend=backend, message=f'"{message}"'))
    return None


@contextlib.contextmanager
def explain_startup_errors(backend: str) -> Iterator[None]:
    """Turn a known engine start-up failure raised inside the block into a ``UserError``."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - matched on the message, else re-raised unchanged
        err = explain(exc, backend)
        if err is None:
            raise
        raise err from exc
