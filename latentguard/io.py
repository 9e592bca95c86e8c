"""Files on disk: atomic writes, the artifact error, and the cache root.

Every artifact latentguard writes (activations, directions, groups, summaries, reports, caches)
goes through :func:`atomic_write_text`, :func:`atomic_write_bytes` or :func:`atomic_save_tensors`:
the bytes go to a temporary file in the same folder, which is then renamed over the target, so a
killed process leaves either the old file or the new one, never half of one.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.json"
    >>> atomic_write_text(p, "{}")
    >>> p.read_text()
    '{}'
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: Environment variable that moves latentguard's caches (models, answers, activations).
CACHE_ENV = "LATENTGUARD_CACHE"


class ArtifactError(ValueError):
    """An artifact on disk is corrupt or does not match what was asked for."""


def cache_dir() -> Path:
    """Root of latentguard's caches (``$LATENTGUARD_CACHE`` or the platform user cache dir)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("latentguard"))


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + rename; permissions follow the umask).

    The parent folder is created if needed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(target)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_tensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> None:
    """Save ``tensors`` as a safetensors file atomically (see :func:`atomic_write_bytes`)."""
    from safetensors.torch import save_file

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(target)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
