"""Fine-tuning progress on screen: the step, the loss and the time left, also from a subprocess.

The fine-tune usually runs in a fresh Python process (``finetune.finetune_in_subprocess``), whose
output goes to ``finetune.log``; a person at the terminal saw nothing for the whole run. Now the
trainer reports each step as an event (``step_callback``). In the child, events are written as
marked lines on its output (``print_event``); the parent reads that output line by line
(``relay``), copies every other line into the log file and turns the events into the one
progress line (``StepDisplay``). In process, the events update the line directly.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import IO, Any

from selectllm_local.progress import Line

PREFIX = "@@selectllm-progress "
"""Marks an event line in the child's output (kept out of finetune.log)."""

Event = dict[str, Any]


def step_callback(emit: Callable[[Event], None]) -> Any:
    """A transformers ``TrainerCallback`` that calls ``emit`` at the start, each step and each log."""
    from transformers import TrainerCallback

    class _Steps(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            emit({"step": 0, "total": state.max_steps})

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            emit({"step": state.global_step, "total": state.max_steps})

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
            if logs and "loss" in logs:
                emit({"step": state.global_step, "total": state.max_steps, "loss": logs["loss"]})

    return _Steps()


def print_event(event: Event) -> None:
    """The child's ``emit``: one marked JSON line on stderr, flushed at once."""
    sys.stderr.write(PREFIX + json.dumps(event) + "\n")
    sys.stderr.flush()


class StepDisplay:
    """Turns events into updates of a progress line: step of total, last loss, time left."""

    def __init__(self, line: Line) -> None:
        self.line = line
        self.loss: float | None = None

    def __call__(self, event: Event) -> None:
        if event.get("loss") is not None:
            self.loss = float(event["loss"])
        total = event.get("total")
        self.line.update(
            completed=int(event.get("step", 0)),
            total=int(total) if total else None,
            description="fine-tuning (steps)",
            note=f"loss {self.loss:.4f}" if self.loss is not None else "",
        )


def relay(
    lines: Iterable[str], log_file: IO[str], on_event: Callable[[Event], None]
) -> Event | None:
    """Copy the child's output into ``log_file``, except event lines, which go to ``on_event``,
    up to a job's end event (``worker``), which is returned; None if the output ends first."""
    for raw in lines:
        k = raw.find(PREFIX)  # an event may follow a partial line (a \r progress bar, a warning)
        if k >= 0:
            try:
                event = json.loads(raw[k + len(PREFIX) :])
            except json.JSONDecodeError:
                event = None
            if isinstance(event, dict):
                if k:
                    log_file.write(raw[:k] + "\n")
                    log_file.flush()
                if "end" in event:
                    return event
                on_event(event)
                continue
        log_file.write(raw)
        log_file.flush()
    return None
