"""GGUF to Hugging Face folder, once per file: the conversion cache behind ``--model FILE.gguf``.

Both engines load Hugging Face folders (``config.json`` + safetensors + tokenizer). transformers
reads a GGUF file only into a dequantized model that ``save_pretrained`` refuses to write
("quantized with GGUF"), so the weights are copied into a plain model built from the same config
and saved from there, next to the file's own tokenizer, BOS rule and chat template. The folder is
named by the file's SHA-256, built in a temporary folder and renamed into place, so the same
weights are converted once and a killed conversion leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from selectllm_local.errors import UserError
from selectllm_local.run.store import build_once

log = logging.getLogger(__name__)

CACHE_ENV = "SELECTLLM_CACHE"
MARKER = "selectllm_gguf.json"
"""Written last into a converted folder: the source file's hash and how it was converted."""


def cache_dir() -> Path:
    """``$SELECTLLM_CACHE`` or ``~/.cache/selectllm-local/models``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "selectllm-local" / "models"


def converted_dir(sha256: str, stem: str, *, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / f"{stem}-{sha256[:16]}"


def is_converted(path: Path) -> bool:
    return (path / MARKER).is_file() and (path / "config.json").is_file()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def gguf_metadata(path: Path) -> dict[str, Any]:
    """Scalar and string metadata of a GGUF file (token tables left out), checked for truncation.

    Raises ``UserError`` naming the file when it is not a readable, complete GGUF file.
    """
    from selectllm_local.errors import require

    gguf = require("gguf", feature="Loading a .gguf model")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise UserError(
            f"{path} is not a GGUF file (it does not start with 'GGUF'). Give a .gguf model file "
            "(e.g. from `selectllm models fetch`) or a Hugging Face model folder."
        )
    try:
        reader = gguf.GGUFReader(str(path))
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged file
        raise UserError(
            f"{path} could not be read as a GGUF file ({type(exc).__name__}: {exc}); it is "
            "probably truncated or damaged. Download it again (selectllm models fetch NAME)."
        ) from None
    size = path.stat().st_size
    if end > size:
        raise UserError(
            f"{path} is truncated: its tensors need {end} bytes but the file has {size}. "
            "Download it again (selectllm models fetch NAME) or copy it whole."
        )
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key.split(".")[-1] in (
            "tokens",
            "scores",
            "token_type",
            "merges",
        ):
            continue
        try:
            meta[key] = field.contents()
        except Exception:  # noqa: BLE001 - an odd field type is not needed here
            continue
    return meta


def check_architecture(path: Path, meta: dict[str, Any]) -> str:
    """The file's architecture, or a ``UserError`` when transformers cannot load it from GGUF."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    supported = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
    arch = str(meta.get("general.architecture", ""))
    # llama.cpp spells a few names differently (qwen2moe, gpt-oss); transformers maps them.
    known = {arch, arch.replace("-", "_"), arch.replace("moe", "_moe"), arch.replace("encoder", "")}
    if not known & supported:
        raise UserError(
            f"{path} holds a {arch or 'unnamed'!r} model, an architecture that transformers cannot "
            f"load from GGUF (it can: {', '.join(sorted(supported))}). Use a "
            "model of a supported architecture, or convert this one to a Hugging Face folder with "
            "its own project's tools and pass that folder."
        )
    return arch


def convert_gguf(path: Path | str, *, cache: Path | None = None, dtype: str = "bfloat16") -> Path:
    """Convert a GGUF file once into a cached Hugging Face folder; return the folder.

    The folder is named by the file's SHA-256, so the same weights under another name or path
    reuse it and changed weights get a new one. It is built in a temporary folder and renamed
    into place, so a killed conversion leaves nothing half-written behind.
    """
    path = Path(path).expanduser().resolve()
    digest = sha256_file(path)
    out = converted_dir(digest, path.stem, cache=cache)
    if is_converted(out):
        return out
    meta = gguf_metadata(path)
    arch = check_architecture(path, meta)
    log.info("converting %s (%s) into %s: once, about a minute", path.name, arch, out)
    t0 = time.perf_counter()

    def build(tmp: Path) -> None:
        _write_hf_folder(path, meta, tmp, dtype=dtype)
        info = {
            "source": path.name,
            "sha256": digest,
            "architecture": arch,
            "dtype": dtype,
            "seconds": round(time.perf_counter() - t0, 1),
            "versions": _versions(),
        }
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n", "utf-8")
        _usual_modes(tmp)

    build_once(out, build, done=is_converted)
    log.info("converted %s in %.0f s", path.name, time.perf_counter() - t0)
    return out


def _write_hf_folder(path: Path, meta: dict[str, Any], out: Path, *, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(path.parent), path.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            folder,
            gguf_file=name,
            dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True),
        )
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, OSError, RuntimeError, KeyError) as exc:
        raise UserError(
            f"transformers could not load {path} ({type(exc).__name__}: {exc}). Check that the "
            "file is complete and of a supported architecture, or use a Hugging Face model folder."
        ) from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = path.stem
    torch_dtype = getattr(torch, dtype)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    state = {k: v.to(torch_dtype) for k, v in loaded.state_dict().items()}
    del loaded
    result = plain.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in _tied_keys(plain)]
    if missing or result.unexpected_keys:
        raise UserError(
            f"{path}: the dequantized weights do not fit the model built from its config (missing "
            f"{missing[:3]}, unexpected {result.unexpected_keys[:3]}). This GGUF file is not "
            "supported; use a Hugging Face model folder instead."
        )
    plain.save_pretrained(out)
    # llama.cpp records whether the model expects a BOS token; transformers' GGUF tokenizer does
    # not always carry it over (Gemma 3 then reads prompts without <bos> and degenerates).
    if meta.get("tokenizer.ggml.add_bos_token") and tok.bos_token is not None:
        tok.add_bos_token = True
    template = meta.get("tokenizer.chat_template")
    if template:
        tok.chat_template = template
    tok.save_pretrained(out)


def _usual_modes(folder: Path) -> None:
    """mkdtemp (and safetensors) create owner-only modes; give the cache the umask's modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~umask)


def _tied_keys(model: Any) -> set[str]:
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return set(tied) if not isinstance(tied, dict) else set(tied.keys())


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("transformers", "gguf", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = ""
    return out
