"""The sections that judge a selection: ``[baseline]``, ``[finetune]`` and ``[evaluate]``.

The defaults of :class:`FinetuneConfig` are the SelectLLM paper's QLoRA recipe; those of
:class:`EvaluateConfig` are the one home of the evaluation defaults (the ``evaluate`` command, the
experiment and the library all read them from here).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from selectllm_local.config.base import Section, check_keys
from selectllm_local.config.sections import EngineConfig
from selectllm_local.config.vocab import Dtype, PerplexityBand, Quantization
from selectllm_local.errors import UserError

log = logging.getLogger(__name__)

# [evaluate] settings of the reference NLL only: they do not change the answers, so an experiment
# cell keeps its answers when they change (the NLL stage has its own key).
NLL_SETTINGS = ("nll_limit", "nll_max_tokens")
# [evaluate] keys of earlier versions that are settings of its engine now ([evaluate.engine]).
MOVED_TO_ENGINE = ("backend", "batch_size", "seed")
EVALUATE_BATCH_SIZE = 16  # prompts per batch of an evaluation engine when none is given
_IN_PROCESS = (
    "an evaluation runs its engine in this process (the reference NLL reads the model's weights); "
    "Ray serves select and the baselines. Leave it unset."
)
# Engine settings an evaluation does not take, with the reason: `selectllm evaluate` shows no flag
# for them, and a value in a file or in code is an error (never silently ignored).
ENGINE_NOT_TAKEN: dict[str, str] = {
    "model": "an evaluation runs the base model it is given (--base-model, [experiment] "
    "base_model); leave the engine's model unset.",
    "lora_path": "the adapter is --adapter (in an experiment, each cell's own); leave it unset.",
    **dict.fromkeys(
        ("ray", "ray_actors", "ray_gpus_per_actor", "ray_cpus_per_actor", "ray_max_restarts",
         "ray_shard_size"),
        _IN_PROCESS,
    ),
}  # fmt: skip


@dataclass
class BaselineConfig(Section):
    """Options of the baseline selectors (each baseline reads the ones its registry entry,
    ``baselines.registry.REGISTRY``, declares: see ``baseline_options``)."""

    SECTION = "baseline"

    shortest: bool = False
    """length: shortest first instead of longest (experiment: write the method as length:shortest)."""
    band: PerplexityBand = "high"
    """answer-/instruction-perplexity: keep the high, low or middle band (experiment:
    answer-perplexity:low and so on)."""
    scorer_model: str | None = None
    """answer-/instruction-perplexity: local causal LM (folder, .gguf or known name) that scores
    the pool, normally the base model [experiment default: its base_model]."""
    scorer_batch_size: int = 16
    """answer-/instruction-perplexity: texts per scoring batch."""
    diversity_sample: int = 500
    """diversity: pool items each instruction's Rouge-L overlap is measured against."""
    ifd_max_length: int = 1024
    """ifd, cluster-ifd: tokens per scored text (prompt + response; Superfiltering's 1,024). The
    scoring model is the engine's --model ([engine] model in an experiment)."""

    def __post_init__(self) -> None:
        self._check_vocabularies()
        self._at_least("scorer_batch_size", 1)
        self._at_least("diversity_sample", 1)
        self._at_least("ifd_max_length", 8)


@dataclass
class FinetuneConfig(Section):
    """LoRA / QLoRA fine-tuning settings (defaults: the QLoRA recipe; ``configs/paper_dolly.toml``
    lists where the SelectLLM paper differs)."""

    SECTION = "finetune"

    lora_r: int = 64
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.1
    """Dropout on the LoRA input."""
    learning_rate: float = 2e-4
    """Peak learning rate (AdamW)."""
    epochs: float = 3.0
    """Passes over the selected records."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: train for --epochs)."""
    max_length: int = 1024
    """Tokens per example (prompt + response); longer examples are cut at the end."""
    batch_size: int = 4
    """Examples per device batch."""
    grad_accum: int = 4
    """Batches accumulated per optimizer step (effective batch = batch_size x grad_accum)."""
    warmup_ratio: float = 0.03
    """Fraction of steps spent warming the learning rate up."""
    lr_scheduler: str = "constant_with_warmup"
    """Learning-rate schedule (QLoRA: constant after a short warm-up); any transformers scheduler name."""
    target_modules: str | list[str] = "all-linear"
    """Modules that get LoRA adapters: all-linear (QLoRA) or module names, comma-separated."""
    quantization: Quantization = "auto"
    """Base-model weights: nf4 (4-bit QLoRA, bitsandbytes), none, or auto (nf4 on CUDA, else none)."""
    dtype: Dtype = "auto"
    """Compute dtype: auto (bfloat16 on CUDA, float32 on CPU), bfloat16, float16, float32."""
    gradient_checkpointing: bool | None = None
    """Recompute activations to save memory [default: on for CUDA, off on CPU]."""
    group_by_length: bool = True
    """Batch examples of similar length together, so little compute goes to padding (Dolly at
    batch 8 padded to the batch's longest example is ~4x its real tokens)."""
    seed: int = 0
    """Seed for LoRA initialisation, data order and dropout."""
    logging_steps: int = 1
    """Write the training log every this many optimizer steps."""
    val_fraction: float = 0.0
    """Share of the records held out (seeded) to measure validation loss each epoch; 0 = none.
    The paper holds out 20% and stops early on it."""
    early_stopping_patience: int = 0
    """Stop after this many epochs without a lower validation loss, keeping the best epoch's
    adapter (0 = train all epochs). Needs val_fraction > 0."""
    early_stopping_threshold: float = 0.0
    """With early stopping: a fall in validation loss of this much or less counts as no
    improvement (the official SelectLLM code uses 0.01)."""

    def __post_init__(self) -> None:
        for name in (
            "lora_r",
            "lora_alpha",
            "max_length",
            "batch_size",
            "grad_accum",
            "logging_steps",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise self._bad(name, f"must be a positive integer (got {value!r}).")
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise self._bad("lora_dropout", f"must be in [0, 1) (got {self.lora_dropout!r}).")
        if not float(self.learning_rate) > 0:
            raise self._bad("learning_rate", f"must be positive (got {self.learning_rate!r}).")
        if not float(self.epochs) > 0:
            raise self._bad("epochs", f"must be positive (got {self.epochs!r}).")
        if not isinstance(self.max_steps, int) or (self.max_steps < 1 and self.max_steps != -1):
            raise self._bad(
                "max_steps", f"must be a positive integer or -1 (got {self.max_steps!r})."
            )
        if not 0.0 <= float(self.warmup_ratio) < 1.0:
            raise self._bad("warmup_ratio", f"must be in [0, 1) (got {self.warmup_ratio!r}).")
        self._check_vocabularies()
        if isinstance(self.target_modules, str) and "," in self.target_modules:
            self.target_modules = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        if not self.target_modules:
            raise self._bad("target_modules", "must name at least one module (or be all-linear).")
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise self._bad("val_fraction", f"must be in [0, 1) (got {self.val_fraction!r}).")
        patience = self.early_stopping_patience
        if not isinstance(patience, int) or isinstance(patience, bool) or patience < 0:
            raise self._bad("early_stopping_patience", f"must be 0 or more (got {patience!r}).")
        threshold = self.early_stopping_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or threshold < 0:
            raise self._bad("early_stopping_threshold", f"must be 0 or more (got {threshold!r}).")
        if patience and not self.val_fraction:
            raise self._bad(
                "early_stopping_patience", "needs val_fraction > 0 (a validation split)."
            )

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], *, where: str = "[finetune]"
    ) -> FinetuneConfig:
        """Build from a config-file table, naming unknown keys."""
        table = {k.replace("-", "_"): v for k, v in values.items()}
        check_keys(cls, table, where=where)
        return cls(**table)

    def replace(self, **changes: Any) -> FinetuneConfig:
        return dataclasses.replace(self, **changes)


@dataclass
class EvaluateConfig(Section):
    """How a fine-tuned model is scored on the test set (the one home of these defaults).

    The engine that writes the answers is an :class:`EngineConfig` of its own (``[evaluate.engine]``
    in a file; the engine flags of ``selectllm evaluate``): every engine setting reaches the
    evaluation unchanged. Its model is the base model (+ adapter) being evaluated.
    """

    SECTION = "evaluate"
    NOT_TAKEN: ClassVar[Mapping[str, Mapping[str, str]]] = {"engine": ENGINE_NOT_TAKEN}
    """Settings of the nested sections this one does not take (no flag; a value is an error)."""

    limit: int | None = None
    """Score only the first N test examples."""
    max_new_tokens: int = 256
    """Answer length limit (tokens)."""
    max_prompt_tokens: int = 1024
    """Longer prompts keep their end (the instruction is at the end)."""
    nll_limit: int | None = None
    """Score the reference NLL (mean per-token negative log-likelihood of each reference answer)
    on the first N test examples [default: the examples answered]; 0 turns it off."""
    nll_max_tokens: int = 256
    """Reference NLL: tokens of each reference scored at most (a longer one is scored on its start)."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    """The engine writing the answers (backend, dtype, gpu_memory_utilization, max_num_seqs, ...;
    batch_size default 16; seed: the answers are greedy, the seed fixes the engine)."""

    def __post_init__(self) -> None:
        if isinstance(self.engine, Mapping):  # a table from a file or a dict from code
            self.engine = EngineConfig(**self.engine)
        if self.limit is not None:
            self._at_least("limit", 1)
        if self.nll_limit is not None:
            self._at_least("nll_limit", 0)
        self._at_least("nll_max_tokens", 1)
        self._at_least("max_new_tokens", 1)
        self._at_least("max_prompt_tokens", 1)
        if self.engine.batch_size is None:
            self.engine.batch_size = EVALUATE_BATCH_SIZE
        unset = EngineConfig()
        for name, why in ENGINE_NOT_TAKEN.items():
            value = getattr(self.engine, name)
            if value != getattr(unset, name):
                raise self._bad("engine", f"{name} = {value!r}: {why}")

    @classmethod
    def table(cls, values: Mapping[str, Any], *, where: str = "[evaluate]") -> dict[str, Any]:
        """An ``[evaluate]`` table checked, with keys of earlier versions moved to its engine.

        ``backend``, ``batch_size`` and ``seed`` were ``[evaluate]`` keys; they still work and
        mean the same (``[evaluate.engine]``), with a warning naming the new place.
        """
        table = dict(values)
        engine = dict(table.get("engine") or {})
        for key in MOVED_TO_ENGINE:
            if key in table:
                if key in engine:
                    raise UserError(
                        f"{where} {key} is now [evaluate.engine] {key}; the file gives both."
                    )
                log.warning("%s %s is now [evaluate.engine] %s; read it there", where, key, key)
                engine[key] = table.pop(key)
        check_keys(cls, table, where=where)
        if engine:
            check_keys(EngineConfig, engine, where=f"{where[:-1]}.engine]")
            table["engine"] = engine
        return table
