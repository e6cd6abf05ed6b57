"""Random-weight models built locally: tiny ones for tests, real shapes for benchmarks.

Nothing here downloads anything. A model directory gets a config of a named shape, random weights
and a byte-level BPE tokenizer trained in-process with the ``tokenizers`` library (digits split one
per token, as in Qwen tokenizers), plus a ChatML chat template. A random-weight model of a real
shape costs exactly what the real model costs per token, which is what throughput benchmarks need.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from selectllm_local.progress import quiet_weight_bars

log = logging.getLogger(__name__)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Architectures written out in code so benchmarks need no hub access. Values are those of the
# published configs; ``tiny-*`` shapes are for tests (vLLM's CPU attention needs head_dim >= 32).
SHAPES: dict[str, dict[str, Any]] = {
    "tiny-qwen2": dict(
        model_type="qwen2",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        vocab_size=None,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
    ),
    "tiny-llama": dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        vocab_size=None,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
    ),
    "qwen2.5-0.5b": dict(
        model_type="qwen2",
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        vocab_size=151936,
        tie_word_embeddings=True,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
    ),
    "qwen2.5-1.5b": dict(
        model_type="qwen2",
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        vocab_size=151936,
        tie_word_embeddings=True,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
    ),
    "qwen2.5-7b": dict(
        model_type="qwen2",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=32768,
        vocab_size=152064,
        tie_word_embeddings=False,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
    ),
    "llama-2-7b": dict(  # the paper's base model (meta-llama/Llama-2-7b-hf config.json)
        model_type="llama",
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        vocab_size=32000,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
    ),
    "llama-3-8b": dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        vocab_size=128256,
        tie_word_embeddings=False,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
    ),
}


def non_embedding_params(shape: dict[str, Any]) -> int:
    """Parameters that cost 2 FLOPs per token in a forward pass (all but the embedding tables).

    The LM head counts only when untied? No: the LM head matmul runs for every *generated*
    position, not for prefill positions in vLLM (it computes logits for the last token only), so
    the prefill FLOP count uses the transformer blocks alone.
    """
    h = shape["hidden_size"]
    inter = shape["intermediate_size"]
    n_layers = shape["num_hidden_layers"]
    n_heads = shape["num_attention_heads"]
    n_kv = shape["num_key_value_heads"]
    head_dim = h // n_heads
    attn = h * (n_heads * head_dim) + 2 * h * (n_kv * head_dim) + (n_heads * head_dim) * h
    mlp = 3 * h * inter
    return n_layers * (attn + mlp)


def _training_corpus() -> list[str]:
    """A small built-in corpus: enough English-ish text for a BPE tokenizer to learn words."""
    words = (
        "the a an of to and in is for on with that as by this be are from at or it you your "
        "instruction input response select choose candidate candidates best most useful clear "
        "complex detail diverse value learning unique challenge specific task question answer "
        "write explain list give describe summarize classify extract what when where who why how "
        "which number identifiers only reason one sentence each pick return exactly following "
        "system user assistant please data model text example words code python function story"
    ).split()
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 3)]
    lines += [f'[{i}] [{i}, {i + 1}] {{"ids": [{i}]}}' for i in range(0, 100)]
    lines += ["ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz .,;:!?()[]{}<>\"'-_/\\"]
    return lines * 3


def build_tokenizer(
    out_dir: Path | str, *, vocab_size: int = 1024, texts: Iterable[str] | None = None
) -> Any:
    """Train a byte-level BPE tokenizer in-process and save it (with chat template) to ``out_dir``.

    ``texts`` is the training corpus (default: a small built-in one, enough for tests).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts if texts is not None else _training_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 32768
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return fast


def build_random_model(
    out_dir: Path | str,
    shape: str = "tiny-qwen2",
    *,
    seed: int = 0,
    dtype: str = "bfloat16",
    tokenizer_vocab: int = 1024,
) -> Path:
    """Write a random-weight causal LM of a named shape, with tokenizer, to ``out_dir``.

    Returns the directory. Usable by transformers, vLLM and peft exactly like a downloaded model.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if shape not in SHAPES:
        from selectllm_local.errors import UserError

        raise UserError(f"Unknown model shape '{shape}'. Known shapes: {', '.join(SHAPES)}.")
    out = Path(out_dir)
    tok = build_tokenizer(out, vocab_size=tokenizer_vocab)
    spec = dict(SHAPES[shape])
    model_type = spec.pop("model_type")
    vocab = spec.pop("vocab_size") or len(tok)
    eos_id = tok.convert_tokens_to_ids("<|im_end|>")
    pad_id = tok.convert_tokens_to_ids("<|endoftext|>")
    config = AutoConfig.for_model(
        model_type,
        vocab_size=max(vocab, len(tok)),
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype=dtype,
        **spec,
    )
    torch_dtype = getattr(torch, dtype)
    if shape.startswith("tiny-"):
        # The tests' models keep transformers' own init, bit for bit (golden selections).
        torch.manual_seed(seed)
        with torch.device("cpu"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    else:
        model = _fast_random_model(config, torch_dtype, seed)
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    with quiet_weight_bars(out):
        model.save_pretrained(out, safe_serialization=True)
    meta = {"shape": shape, "seed": seed, "dtype": dtype, "random_weights": True}
    (out / "selectllm_model.json").write_text(json.dumps(meta, indent=2) + "\n", "utf-8")
    log.info("wrote random-weight %s model to %s", shape, out)
    return out


_POOL = 4_194_301  # prime


def _fast_random_model(config: Any, dtype: Any, seed: int) -> Any:
    """A model of ``config`` with seeded random weights, without transformers' slow init.

    The default init runs per-module initialisers in float32 on one CPU thread: minutes for a
    1.5B shape. Here the model is built on the meta device (no memory, no init), allocated in
    the target dtype on the GPU when there is one (else the CPU), and filled in place: normal
    (std ``initializer_range``) for matrices and embeddings, ones for norm weights, zeros for
    biases. Throughput benchmarks only need the right shapes and finite, model-like values.
    """
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model = model.to_empty(device=device)
    model.tie_weights()
    gen = torch.Generator(device=device).manual_seed(seed)
    std = float(getattr(config, "initializer_range", 0.02))
    # Drawing billions of normals costs ~45 ns each on a CPU core; a seeded pool of ~4M draws,
    # copied from a random offset per tensor, fills at memory speed. The pool length is prime,
    # so no row of a weight matrix repeats another.
    pool = (torch.randn(_POOL, generator=gen, device=device) * std).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:  # RMSNorm / LayerNorm scales
                p.fill_(1.0)
            else:
                flat, pos = p.view(-1), 0
                off = int(torch.randint(0, _POOL, (1,), generator=gen, device=device))
                while pos < flat.numel():
                    take = min(flat.numel() - pos, _POOL - off)
                    flat[pos : pos + take] = pool[off : off + take]
                    pos, off = pos + take, 0
    return model.to("cpu") if device != "cpu" else model
