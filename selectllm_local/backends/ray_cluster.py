"""Joining a Ray cluster: the one place the driver imports ``ray`` and turns its failures into
``UserError``s.

``--ray`` names the cluster: ``local`` starts a private one on this machine (it ends with the
process), ``auto`` joins the cluster this node already belongs to (``ray start`` ran here, or
``RAY_ADDRESS`` is set), anything else is the head's address (``host:6379`` or
``ray://host:10001``). A process that has already joined a cluster (a notebook, the test session)
keeps it, whatever ``--ray`` says.

An unreachable address would make ``ray.init`` retry for minutes, so the address is first tried
with a plain TCP connection (5 s) and refused at once with a message saying what to start where.
Actors and Ray Data workers get the driver's ``SELECTLLM_*``, ``VLLM_*``, ``HF_*``,
``TRANSFORMERS_*`` and ``TOKENIZERS_*`` variables (``runtime_env``), so offline switches and the
engine's knobs mean the same on every node.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from selectllm_local.errors import UserError

log = logging.getLogger(__name__)

LOCAL, AUTO = "local", "auto"
FORWARDED_PREFIXES = ("SELECTLLM_", "VLLM_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")
CONNECT_TIMEOUT_S = 5.0


def require_ray() -> Any:
    """The ``ray`` module, or a UserError naming the extra that installs it."""
    try:
        import ray
        import ray.exceptions  # noqa: F401 - the error types the dispatcher catches
    except ImportError:
        raise UserError(
            "--ray needs the ray package (ray[data]), which is not installed. Install the ray "
            "extra: pip install -e '.[cpu,ray,dev]' (or pip install 'selectllm-local[ray]'), "
            "or run without --ray."
        ) from None
    return ray


def forwarded_env() -> dict[str, str]:
    """The driver's environment variables that actors and Ray Data workers get too."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES)}


def _host_port(address: str) -> tuple[str, int] | None:
    rest = address.removeprefix("ray://")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_reachable(address: str) -> None:
    """Refuse an address nothing answers at, before ``ray.init`` retries it for minutes."""
    hp = _host_port(address)
    if hp is None:
        raise UserError(
            f"--ray {address!r} is not a cluster address. Use local (start a cluster on this "
            "machine), auto (the cluster this node joined with `ray start`), or the head's "
            "host:port (e.g. 10.0.0.1:6379) or ray://host:10001."
        )
    try:
        with socket.create_connection(hp, timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise UserError(
            f"--ray {address}: nothing answers at {hp[0]}:{hp[1]} ({exc}). Start the head node "
            "there (`ray start --head --port 6379`), check the address and firewall, use --ray "
            "auto on a node of a running cluster, or --ray local for a cluster on this machine."
        ) from None


def connect(address: str) -> Any:
    """Join (or start, for ``local``) the cluster ``address``; returns the ``ray`` module."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address == LOCAL:
        log.info("starting a local Ray cluster on this machine")
    else:
        if address != AUTO:
            check_reachable(address)
        kwargs["address"] = address
        kwargs.pop("include_dashboard")
    try:
        ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001 - every failure to join is the user's cluster
        hint = (
            "No running cluster was found from this node: start one (`ray start --head`) or give "
            "its address."
            if address == AUTO
            else "Check that the cluster runs the same Ray and Python versions as this machine."
        )
        raise UserError(
            f"--ray {address}: could not join the Ray cluster ({exc}). {hint}"
        ) from None
    res = ray.cluster_resources()
    log.info(
        "Ray cluster: %d CPUs, %d GPUs on %d nodes",
        res.get("CPU", 0),
        res.get("GPU", 0),
        len(ray.nodes()),
    )
    return ray


def unwrap_task_error(exc: Exception) -> Exception:
    """The user's error inside a Ray task error (a model that fails to load on a worker)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, UserError) else exc
