"""Shared pieces of the command line: model and engine options, output, and options generated
from config dataclasses (their fields, types, defaults and ``help`` metadata), so a default is
stated once, in the dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger("latentguard")

Handler = Callable[[argparse.Namespace], int]
C = TypeVar("C")

#: Prefix of the argparse destinations of generated options (no clash with hand-written ones).
CONFIG_DEST = "cfg_"


def _int_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _str_tuple(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _option_type(hint: Any) -> tuple[Any, bool] | None:
    """(scalar type or parser, is_bool) for a field's type hint; None if not expressible as a flag."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _option_type(args[0])
    if hint is bool:
        return bool, True
    if hint in (int, float, str):
        return hint, False
    if origin is tuple and args and all(a in (int, Ellipsis) for a in args):
        return _int_tuple, False
    if origin is tuple and args and all(a in (str, Ellipsis) for a in args):
        return _str_tuple, False
    return None


def add_config_options(
    p: argparse.ArgumentParser,
    cls: type,
    *,
    skip: Sequence[str] = (),
    flags: Mapping[str, str] | None = None,
    title: str | None = None,
) -> None:
    """Add one ``--flag`` per field of the dataclass ``cls`` (booleans get ``--x/--no-x``).

    Unset flags stay ``None``, so :func:`config_from_args` leaves the dataclass default in place.

    Args:
        p: The (sub)command's parser.
        cls: A config dataclass whose fields carry ``metadata={"help": ...}`` (and optionally
            ``"choices"``).
        skip: Fields not offered on the command line.
        flags: Field name -> flag name (without ``--``) where it differs from the field name.
        title: Argument-group title (default: the class name).
    """
    hints = typing.get_type_hints(cls)
    group = p.add_argument_group(title or f"{cls.__name__} (defaults from latentguard)")
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        kind = _option_type(hints[f.name])
        if kind is None:
            continue
        parse, is_bool = kind
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if isinstance(default, tuple):
            default = ",".join(str(x) for x in default) or "()"
        help_text = f"{f.metadata.get('help', '')} (default: {default})".strip()
        name = "--" + (flags or {}).get(f.name, f.name.replace("_", "-"))
        dest = CONFIG_DEST + f.name
        if is_bool:
            group.add_argument(
                name, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            group.add_argument(
                name,
                dest=dest,
                type=parse,
                default=None,
                choices=f.metadata.get("choices"),
                metavar=None if f.metadata.get("choices") else f.name.upper(),
                help=help_text,
            )


def config_from_args(cls: type[C], args: argparse.Namespace, base: C | None = None, **fixed: Any) -> C:
    """Build ``cls`` from the flags given on the command line (others keep their defaults).

    ``fixed`` values win over flags (for options with their own spelling, e.g. ``--builtin-only``).
    With ``base`` (an instance of ``cls``), unset flags keep ``base``'s values instead of the defaults.
    """
    given = {
        f.name: getattr(args, CONFIG_DEST + f.name)
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if getattr(args, CONFIG_DEST + f.name, None) is not None
    }
    given.update({k: v for k, v in fixed.items() if v is not None})
    if base is not None:
        return dataclasses.replace(base, **given)  # type: ignore[type-var]
    return cls(**given)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model-loading options (``--model``, ``--dtype``, ``--device`` ...)."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default="default",
        help="HF id, local dir, .gguf file, or an alias: default, gemma3-270m, organism[:SPEC], attacked[:SPEC]",
    )
    g.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 | auto (default: fp32 on CPU)")
    g.add_argument("--device", default=None, help="cpu | cuda | cuda:N")
    g.add_argument("--device-map", default=None, help="e.g. 'auto' to spread a big model over devices")
    g.add_argument(
        "--load-in-bits", type=int, choices=(4, 8), default=None, help="bitsandbytes quantised loading"
    )
    g.add_argument(
        "--chat-template", default=None, help="Jinja text or file replacing the tokenizer's template"
    )
    g.add_argument(
        "--layers-path", default=None, help="dotted path to the decoder layers (unknown architectures)"
    )
    g.add_argument("--system", default=None, help="system prompt (default: the template's own)")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """The engine options (local, or Ray with workers and threads)."""
    g = p.add_argument_group("engine")
    g.add_argument(
        "--engine", choices=("local", "ray"), default="local", help="run here, or on Ray (latentguard[ray])"
    )
    g.add_argument("--workers", type=int, default=2, help="Ray workers, each with its own model replica")
    g.add_argument(
        "--ray-address", default=None, help="Ray cluster to join (default: start one on 127.0.0.1)"
    )
    g.add_argument(
        "--threads", type=int, default=None, help="torch threads (per Ray worker; default cores / workers)"
    )
    g.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs reserved per Ray worker")


def engine_config(args: argparse.Namespace) -> Any:
    """The Ray engine's config for ``--engine ray``; ``None`` (after applying ``--threads``) for local."""
    if args.engine == "local":
        if args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
        return None
    from latentguard.ray_engine import EngineConfig

    return EngineConfig(
        workers=args.workers,
        threads=args.threads,
        address=args.ray_address,
        gpus_per_worker=args.gpus_per_worker,
    )


def model_ref(args: argparse.Namespace) -> Any:
    """The :class:`latentguard.models.ModelRef` the model options describe."""
    from latentguard.models import ModelRef

    return ModelRef(
        spec=args.model,
        dtype=args.dtype,
        device=args.device,
        device_map=args.device_map,
        load_in_bits=args.load_in_bits,
        chat_template=args.chat_template,
        layers_path=args.layers_path,
    )


def load_model(args: argparse.Namespace) -> Any:
    """Load the model the options describe."""
    # the same options a Ray worker loads its replica with (ray_engine imports ray lazily)
    return model_ref(args).load()


def print_json(obj: Any) -> None:
    """Write ``obj`` as indented JSON to stdout (the commands' result)."""
    sys.stdout.write(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def instructions(spec: str, limit: int | None = None) -> list[str]:
    """The instructions of a data spec (file, ``builtin:NAME``, ``shared:NAME``, ``hf:NAME``).

    A row with ``messages`` gives its last user message.
    """
    from latentguard.data import load_any

    return [e.instruction for e in load_any(spec, limit=limit)]


def sourced_instructions(specs: str, limit: int | None = None) -> tuple[list[str], list[str]]:
    """The instructions of comma-separated data specs, and the spec each came from (its source).

    Args:
        specs: One spec or several, comma-separated (``shared:harmful_advbench,my.jsonl``).
        limit: At most this many instructions per spec.

    Returns:
        ``(instructions, sources)``.
    """
    texts: list[str] = []
    sources: list[str] = []
    for spec in (s.strip() for s in specs.split(",")):
        if spec:
            got = instructions(spec, limit)
            texts += got
            sources += [spec] * len(got)
    return texts, sources


def prompts(spec: str, limit: int | None = None) -> list[Any]:
    """The prompts of a data spec: each row's conversation (``messages``) if it has one, else its instruction."""
    from latentguard.data import load_any

    return [e.prompt for e in load_any(spec, limit=limit)]


def add_messages_arg(p: argparse.ArgumentParser) -> None:
    """``--messages``: a conversation as JSON text, or ``@FILE`` holding it (instead of ``--prompt``)."""
    p.add_argument(
        "--messages",
        default=None,
        help='a conversation instead of --prompt: JSON [{"role": "user", "content": ...}, ...] or @FILE '
        "(t_inst is the last user message's last token)",
    )


def messages_arg(value: str) -> Any:
    """The conversation ``--messages`` gives (JSON text, or ``@FILE``).

    Raises:
        DataError: If it is not a JSON conversation.
    """
    from latentguard.conversation import ConversationError, as_conversation
    from latentguard.data import DataError

    text = Path(value[1:]).read_text(encoding="utf-8") if value.startswith("@") else value
    try:
        return as_conversation(json.loads(text))
    except (json.JSONDecodeError, ConversationError) as exc:
        raise DataError(f"--messages: {exc}") from exc


def prompt_arg(args: argparse.Namespace) -> Any:
    """The one prompt a command was given: ``--messages`` (a conversation) or ``--prompt``, else ``None``.

    Raises:
        ValueError: If both are given.
    """
    if getattr(args, "messages", None) is not None:
        if getattr(args, "prompt", None) is not None:
            raise ValueError("give --prompt or --messages, not both")
        return messages_arg(args.messages)
    return getattr(args, "prompt", None)


def write_jsonl(path: str, rows: Sequence[dict[str, Any]]) -> None:
    """Write rows as JSON Lines, atomically."""
    from latentguard.io import atomic_write_text

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
