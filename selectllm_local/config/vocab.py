"""Every string vocabulary of the settings, each declared once as a ``Literal``.

A field annotated with one of these is checked against it at construction
(``Section._in_vocabulary``); the tuple beside each is the same list for code that iterates it
(``cluster.subsets``, ``baselines.registry``, the experiment's method variants).
"""

from __future__ import annotations

import typing
from typing import Literal

BackendName = Literal["auto", "vllm", "transformers", "fake"]
"""Every name ``--backend`` accepts; ``backends.registry.LOADERS`` has a loader for each but auto."""
BACKEND_NAMES: tuple[str, ...] = typing.get_args(BackendName)

Layout = Literal["diverse", "cluster", "random"]
"""How candidates are grouped into subsets (``cluster.subsets``)."""
LAYOUTS: tuple[str, ...] = typing.get_args(Layout)

Mode = Literal["generate", "logprobs"]
"""How the selector answers: it writes ids, or its label log-probabilities are read."""
MODES: tuple[str, ...] = typing.get_args(Mode)

Dtype = Literal["auto", "bfloat16", "float16", "float32"]
"""Model and compute dtypes."""
DTYPES: tuple[str, ...] = typing.get_args(Dtype)

WeightDtype = Literal["bfloat16", "float16", "float32"]
"""Dtypes a random-weight model is written in."""

Quantization = Literal["auto", "nf4", "none"]
"""Base-model weights of a fine-tune."""
QUANTIZATIONS: tuple[str, ...] = typing.get_args(Quantization)

PerplexityBand = Literal["high", "low", "middle"]
"""Which band of the perplexity ranking a perplexity baseline keeps."""
PERPLEXITY_BANDS: tuple[str, ...] = typing.get_args(PerplexityBand)

OutputFormat = Literal["jsonl", "parquet", "hf"]
"""Extra output of ``select`` besides selected.jsonl."""
OUTPUT_FORMATS: tuple[str, ...] = typing.get_args(OutputFormat)


def vocabulary(tp: object) -> tuple[str, ...]:
    """The words of a ``Literal`` annotation (also inside ``X | None``); () for other types."""
    if typing.get_origin(tp) is Literal:
        return tuple(str(a) for a in typing.get_args(tp))
    for arg in typing.get_args(tp):
        if typing.get_origin(arg) is Literal:
            return vocabulary(arg)
    return ()
