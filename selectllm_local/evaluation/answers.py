"""Answers and reference NLL of a model (base + LoRA adapter) on test examples, through the backends.

Answers are generated through ``backends`` (the same engines the selection uses; the adapter goes
in as the engine's ``lora_path``), with the backends' one ``auto`` policy: vLLM when installed,
except that an adapter without a GPU goes to transformers. Prompts are cut as training cuts them
(:func:`~selectllm_local.evaluation.testset.fit_prompts`); answers are decoded greedily. On a CPU
the model runs in float32 (exact sums, as in training). The reference NLL always runs on the
transformers backend (:mod:`~selectllm_local.evaluation.refnll`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selectllm_local.config.training import EVALUATE_BATCH_SIZE
from selectllm_local.errors import UserError
from selectllm_local.evaluation.refnll import RowNLL
from selectllm_local.evaluation.testset import TestExample, fit_prompts

if TYPE_CHECKING:
    from selectllm_local.config import EngineConfig, EvaluateConfig
    from selectllm_local.config.vocab import BackendName

log = logging.getLogger(__name__)


def resolve_backend(name: str, *, adapter: str | Path | None = None) -> BackendName:
    """The backends' ``auto`` policy for this evaluation (an adapter counts)."""
    from selectllm_local.backends import resolve_backend_name

    return resolve_backend_name(name, lora=adapter is not None)


def engine_options(config: EvaluateConfig, *, adapter: str | Path | None) -> EngineConfig:
    """The engine section an evaluation runs with (what ``load_backend`` takes): the evaluation's
    own ``engine`` with the adapter, the resolved backend and dtype and a context that fits."""
    from selectllm_local import hardware

    engine = config.engine
    extra: dict[str, Any] = dict(engine.extra)
    if adapter is not None:
        rank = int(json.loads((Path(adapter) / "adapter_config.json").read_text("utf-8"))["r"])
        extra["max_lora_rank"] = max(8, rank)
    return dataclasses.replace(
        engine,
        backend=resolve_backend(engine.backend, adapter=adapter),
        dtype=hardware.resolve_dtype(engine.dtype, cpu_auto="float32"),
        max_model_len=engine.max_model_len or config.max_prompt_tokens + config.max_new_tokens,
        lora_path=str(adapter) if adapter is not None else None,
        extra=extra,
    )


def _checked_model(base_model: str | Path, adapter: str | Path | None) -> Path:
    """The base model as a local folder; an adapter folder must hold its config."""
    from selectllm_local.models.registry import resolve_model_path

    base = Path(resolve_model_path(base_model, flag="--base-model"))  # .gguf / known name
    if not base.exists():
        raise UserError(f"Base model {base} does not exist: give a local model directory.")
    if adapter is not None and not (Path(adapter) / "adapter_config.json").exists():
        raise UserError(
            f"Adapter {adapter} has no adapter_config.json: give a fine-tuned adapter folder."
        )
    return base


def generate_answers(
    examples: list[TestExample],
    *,
    base_model: str | Path,
    adapter: str | Path | None = None,
    config: EvaluateConfig | None = None,
    progress: bool = True,
) -> list[str]:
    """Greedy answers of base model (+ adapter) for every example, in order."""
    from selectllm_local.backends import load_backend
    from selectllm_local.config import EvaluateConfig

    config = config or EvaluateConfig()
    base_model = _checked_model(base_model, adapter)
    engine_cfg = engine_options(config, adapter=adapter)
    log.info("generating %d answers with %s", len(examples), engine_cfg.backend)
    from selectllm_local.progress import status

    with status(f"evaluation: starting the {engine_cfg.backend} engine", enabled=progress):
        engine = load_backend(engine_cfg.backend, str(base_model), engine_cfg)
    try:
        tok = engine.tokenizer  # an HF tokenizer (the scripted fake has none)
        cut = (  # cut in the input first, as training does; the engine then only adds its BOS
            fit_prompts(examples, tok, config.max_prompt_tokens)
            if tok is not None
            else [e.prompt for e in examples]
        )
        prompts = [engine.fit_prompt(p, config.max_prompt_tokens) for p in cut]
        gens = engine.generate(
            prompts, max_tokens=config.max_new_tokens, seed=config.engine.seed, progress=progress
        )
    finally:
        engine.close()
    return [g.text.strip() for g in gens]


def reference_nll(
    examples: list[TestExample],
    *,
    base_model: str | Path,
    adapter: str | Path | None = None,
    config: EvaluateConfig | None = None,
    progress: bool = True,
) -> list[RowNLL]:
    """Mean per-token NLL of each example's reference under base model (+ adapter), in order.

    Always on the transformers backend (one forward pass per row, teacher forcing; the adapter is
    merged into the weights as for generation), on the prompt the answers are generated from.
    """
    from selectllm_local.backends import load_backend
    from selectllm_local.backends.hf_backend import HFBackend
    from selectllm_local.config import EvaluateConfig
    from selectllm_local.evaluation.refnll import reference_nll as score_rows
    from selectllm_local.progress import progress_bar

    config = config or EvaluateConfig()
    base_model = _checked_model(base_model, adapter)
    engine_cfg = dataclasses.replace(
        engine_options(config, adapter=adapter),
        backend="transformers",
        max_model_len=config.max_prompt_tokens + config.nll_max_tokens,
    )
    log.info("scoring the reference NLL of %d test rows", len(examples))
    engine = load_backend("transformers", str(base_model), engine_cfg)
    if not isinstance(engine, HFBackend):  # in process: EvaluateConfig refuses Ray settings
        engine.close()
        raise TypeError(f"the reference NLL needs the transformers model, got {engine.name}")
    try:
        prompts = fit_prompts(examples, engine.tokenizer, config.max_prompt_tokens)
        with progress_bar("reference NLL", total=len(examples), enabled=progress) as advance:
            return score_rows(
                engine.model,
                engine.tokenizer,
                prompts,
                [e.reference for e in examples],
                batch_size=config.engine.batch_size or EVALUATE_BATCH_SIZE,  # set by __post_init__
                max_tokens=config.nll_max_tokens,
                on_batch=advance,
            )
    finally:
        engine.close()
