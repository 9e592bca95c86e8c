"""Build the guard service from environment variables, for multi-process servers.

``latentguard serve`` runs one process. To run several workers behind one port, let uvicorn start
the processes and have each build its own app (and load its own model replica) with
:func:`app_from_env`::

    LATENTGUARD_GUARD=runs/guard LATENTGUARD_THREADS=2 \\
        uvicorn --factory latentguard.guard.factory:app_from_env --workers 4 --host 127.0.0.1 --port 8000

The kernel spreads connections over the workers; each has its own micro-batcher and enforces the
limits of :class:`~latentguard.guard.serve.ServeConfig` on its own (so a ``batch_max_size`` of 32
means up to 32 prompts per forward *per worker*).

Variables:

* ``LATENTGUARD_GUARD`` (required): the guard artifact (from ``latentguard guard fit``).
* ``LATENTGUARD_MODEL``: model spec; default the one recorded in the guard, else ``organism``.
* ``LATENTGUARD_DTYPE``, ``LATENTGUARD_DEVICE``, ``LATENTGUARD_DEVICE_MAP``: as ``--dtype``, ``--device``,
  ``--device-map``.
* ``LATENTGUARD_THREADS``: torch threads per worker (set it to cores / workers).
* ``LATENTGUARD_TOKEN_FILE``: file holding the bearer token.
* ``LATENTGUARD_REFUSAL_DIRECTION``: a refusal direction, which turns on over-refusal repair.
* ``LATENTGUARD_AUDIT_DB``, ``LATENTGUARD_AUDIT_STORE_TEXT`` (``1``) and ``LATENTGUARD_AUDIT_FAILURE``
  (``closed`` or ``open``): as ``serve --audit-db``, ``--audit-store-text`` and ``--audit-failure``; the
  workers share the database.
* ``LATENTGUARD_SERVE_<FIELD>``: any numeric :class:`~latentguard.guard.serve.ServeConfig` field, e.g.
  ``LATENTGUARD_SERVE_MAX_PROMPTS=64`` or ``LATENTGUARD_SERVE_BATCH_MAX_WAIT_MS=5``, and
  ``LATENTGUARD_SERVE_POLICY`` (chat completions' policy: ``block``, ``flag`` or ``allow``). Host and port
  are uvicorn's options.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["ENV_PREFIX", "app_from_env", "serve_config_from_env"]

ENV_PREFIX = "LATENTGUARD_"
_NUMERIC_FIELDS = (
    "max_prompts",
    "max_chars",
    "max_new_tokens_limit",
    "batch_max_size",
    "batch_max_wait_ms",
    "request_timeout_s",
    "max_messages",
    "max_conversation_chars",
)


def serve_config_from_env(env: Mapping[str, str] | None = None) -> Any:
    """A :class:`~latentguard.guard.serve.ServeConfig` from ``LATENTGUARD_SERVE_*`` and the token file.

    Raises:
        ValueError: If a value is not a number or out of range.
    """
    from latentguard.guard.serve import ServeConfig, read_token_file

    env = os.environ if env is None else env
    kwargs: dict[str, Any] = {}
    types = {f.name: f.type for f in dataclasses.fields(ServeConfig)}
    for name in _NUMERIC_FIELDS:
        raw = env.get(f"{ENV_PREFIX}SERVE_{name.upper()}")
        if raw is None:
            continue
        try:
            kwargs[name] = int(raw) if "int" in str(types[name]) else float(raw)
        except ValueError as exc:
            raise ValueError(f"{ENV_PREFIX}SERVE_{name.upper()}={raw!r} is not a number") from exc
    audit_db = env.get(f"{ENV_PREFIX}AUDIT_DB")
    if audit_db:
        kwargs["audit_db"] = audit_db
        kwargs["audit_store_text"] = env.get(f"{ENV_PREFIX}AUDIT_STORE_TEXT", "") in ("1", "true", "yes")
        kwargs["audit_failure"] = env.get(f"{ENV_PREFIX}AUDIT_FAILURE") or "closed"
    policy = env.get(f"{ENV_PREFIX}SERVE_POLICY")
    if policy:
        kwargs["policy"] = policy
    token_file = env.get(f"{ENV_PREFIX}TOKEN_FILE")
    if token_file:
        kwargs["token"] = read_token_file(token_file)
    return ServeConfig(**kwargs)


def _guard_model(guard: str) -> str:
    path = Path(guard)
    meta = path / "guard.json" if path.is_dir() else path.with_suffix(".json")
    try:
        return str(json.loads(meta.read_text(encoding="utf-8")).get("model") or "organism")
    except (OSError, ValueError):
        return "organism"


def app_from_env(env: Mapping[str, str] | None = None) -> Any:
    """The FastAPI app of one server worker, configured by ``LATENTGUARD_*`` variables (see module doc).

    Called once per worker process by ``uvicorn --factory``; loads the model, the guard and (with
    ``LATENTGUARD_REFUSAL_DIRECTION``) the judge and direction for repair.

    Raises:
        ValueError: If ``LATENTGUARD_GUARD`` is missing or a setting is invalid.
    """
    env = os.environ if env is None else env
    guard_path = env.get(f"{ENV_PREFIX}GUARD")
    if not guard_path:
        raise ValueError(f"set {ENV_PREFIX}GUARD to the guard artifact (from `latentguard guard fit`)")
    config = serve_config_from_env(env)
    threads = env.get(f"{ENV_PREFIX}THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))

    from latentguard.guard.fit import LatentGuard
    from latentguard.guard.guarded import LatentGuardBackend
    from latentguard.guard.serve import create_app
    from latentguard.models import load

    lm = load(
        env.get(f"{ENV_PREFIX}MODEL") or _guard_model(guard_path),
        dtype=env.get(f"{ENV_PREFIX}DTYPE") or None,
        device=env.get(f"{ENV_PREFIX}DEVICE") or None,
        device_map=env.get(f"{ENV_PREFIX}DEVICE_MAP") or None,
    )
    guard = LatentGuard.load(guard_path, lm)
    direction_path = env.get(f"{ENV_PREFIX}REFUSAL_DIRECTION")
    direction = judge = None
    if direction_path:
        from latentguard.directions import Directions
        from latentguard.judge import load_judge

        direction = Directions.load(direction_path, expect_fingerprint=lm.fingerprint)
        judge = load_judge()
    backend = LatentGuardBackend(
        lm, guard, judge=judge, repair=direction is not None, refusal_direction=direction
    )
    if config.token is None:
        logger.info("worker %d serves without a bearer token (set %sTOKEN_FILE)", os.getpid(), ENV_PREFIX)
    logger.info("worker %d ready: %s with guard %s", os.getpid(), lm.spec, guard_path)
    return create_app(backend, config)
