"""The benchmark's model: a real model folder, or a random-weight model of a real shape.

Why random weights: a model of a real shape costs exactly what the trained model costs (same
matmuls, same KV cache), and building one needs no download. ``tokenizer="pool"`` swaps in a
tokenizer trained on the pool so prompt lengths match what a trained model's tokenizer would see.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selectllm_local.errors import UserError
from selectllm_local.records import PoolItem

if TYPE_CHECKING:
    from selectllm_local.bench.config import BenchConfig

log = logging.getLogger(__name__)


# -- model -----------------------------------------------------------------------------------------
def prepare_model(cfg: BenchConfig, items: Sequence[PoolItem] = ()) -> tuple[str, dict[str, Any]]:
    """Path of the model to benchmark and its shape (building a random-weight one if needed).

    With ``cfg.tokenizer == "pool"`` the model gets a tokenizer trained on ``items``' text.
    """
    from selectllm_local.models import random_weights as tinymodel
    from selectllm_local.run.store import build_once

    if cfg.model:
        from selectllm_local.models.registry import resolve_model_path

        path = Path(resolve_model_path(cfg.model)).expanduser()
        if not (path / "config.json").is_file():
            raise UserError(f"--model {cfg.model} is not a model folder (no config.json).")
        return str(path), model_shape(path)
    if cfg.shape not in tinymodel.SHAPES:
        raise UserError(
            f"--shape {cfg.shape!r} is not known. Shapes: {', '.join(tinymodel.SHAPES)}."
        )
    tag = f"-tok-{Path(str(cfg.pool)).stem}" if cfg.tokenizer == "pool" else ""
    out = Path(cfg.cache_dir) / f"{cfg.shape}-seed{cfg.seed}{tag}"

    def build(tmp: Path) -> None:
        log.info("building a random-weight %s model in %s (once; cached)", cfg.shape, out)
        tinymodel.build_random_model(tmp, cfg.shape, seed=cfg.seed, dtype="bfloat16")
        if cfg.tokenizer == "pool":
            from selectllm_local.selection import prompts as prompting

            texts = [f"{prompting.candidate_text(it)}\n{it.output or ''}" for it in items]
            texts += [p.read_text("utf-8") for p in prompting.prompts_dir().rglob("*.*")] * 50
            train_pool_tokenizer(tmp, texts)

    build_once(out, build, done=lambda p: (p / "selectllm_model.json").is_file())
    return str(out), model_shape(out)


def model_shape(path: Path | str) -> dict[str, Any]:
    """The architecture fields ``tinymodel.non_embedding_params`` needs, read from config.json."""
    from selectllm_local.run.store import read_json

    c = read_json(Path(path) / "config.json")
    c = c.get("text_config", c)
    return {
        "hidden_size": c["hidden_size"],
        "intermediate_size": c["intermediate_size"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_attention_heads": c["num_attention_heads"],
        "num_key_value_heads": c.get("num_key_value_heads", c["num_attention_heads"]),
        "vocab_size": c.get("vocab_size"),
        "tie_word_embeddings": bool(c.get("tie_word_embeddings", False)),
    }


def train_pool_tokenizer(out_dir: Path | str, texts: list[str], *, vocab_size: int = 32000) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` (the pool), saved into ``out_dir``.

    ``tinymodel``'s tokenizer learns from a few hundred words, so English costs it ~1 token per
    2 characters, about twice what a real LLM tokenizer spends. Benchmarks of real shapes swap in
    this one, trained on the pool itself (digits split, ChatML template, same special tokens), so
    prompt lengths and the shared-prefix fraction match what a trained model would see.
    """
    from selectllm_local.models.random_weights import build_tokenizer

    return build_tokenizer(out_dir, vocab_size=vocab_size, texts=texts)
