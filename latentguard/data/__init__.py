"""Prompt data sets: the package's built-in sets and loaders for JSON Lines, CSV and Hugging Face data.

The built-in sets (``latentguard/data/builtin``) were written for this project and ship with it, so
everything works on a fresh machine. The public research sets are read from a shared folder
(``../shared/data``) when it is present; see :func:`shared_data_dir`.

Every loader returns a list of :class:`Example`. Malformed input raises :class:`DataError`, whose
message names the file and the 1-based line.

Example:
    >>> from latentguard.data import builtin, load_any
    >>> harmful = builtin("harmful")
    >>> harmless = load_any("shared:harmless_alpaca_val", limit=100)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import pathlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from functools import cache
from importlib import resources
from typing import Any

from latentguard.conversation import Conversation, ConversationError, Prompt, as_conversation, last_user_index

__all__ = [
    "HARM_CATEGORIES",
    "DataError",
    "Example",
    "builtin",
    "builtin_rows",
    "inversion_questions",
    "load_any",
    "load_csv",
    "load_hf",
    "load_jsonl",
    "load_shared",
    "shared_data_dir",
    "wrap_template",
]

logger = logging.getLogger(__name__)

HARM_CATEGORIES: tuple[str, ...] = (
    "Illegal Activity",
    "Child Abuse",
    "Hate/Harass/Violence",
    "Malware Viruses",
    "Physical Harm",
    "Economic Harm",
    "Fraud/Deception",
    "Adult Content",
    "Political Campaigning",
    "Privacy Violation Activity",
    "Tailored Financial Advice",
)
"""The 11 CatQA risk categories, in the order that the built-in harmful set uses."""

JAILBREAK_PLACEHOLDER = "[INSERT PROMPT HERE]"
"""Placeholder for the user's request in jailbreak templates (the same one that GPTFuzzer uses)."""

INSTRUCTION_PLACEHOLDER = "{instruction}"
"""Placeholder for the user's request in persuasion templates."""

SHARED_DATA_ENV = "LATENTGUARD_SHARED_DATA"
"""Environment variable that overrides where the shared reference data sets live."""

_EXAMPLE_SETS = ("harmful", "harmless", "harmless_questions", "xstest_like")
_BUILTIN_DIR = "builtin"
_INVERSION_FILE = "inversion_questions.json"


class DataError(ValueError):
    """A data file (or data set) is malformed. The message names the source and 1-based line."""


@dataclass(frozen=True)
class Example:
    """One prompt from a data set.

    Attributes:
        instruction: The prompt text (for a conversation row: its last user message).
        category: The harm category, when the source has one (the ``category`` field or column).
        meta: The row's other fields, such as ``type`` or ``subcategory``.
        messages: The conversation, for a row that has ``messages`` (OpenAI-style
            ``[{"role", "content"}]``, see :mod:`latentguard.conversation`) instead of the text field.
    """

    instruction: str
    category: str | None = None
    meta: dict[str, Any] = dataclass_field(default_factory=dict, hash=False)
    messages: Conversation | None = dataclass_field(default=None, hash=False)

    @property
    def prompt(self) -> Prompt:
        """What a model reads: the conversation when the row has one, else the instruction."""
        return self.messages if self.messages is not None else self.instruction


# --------------------------------------------------------------------------- parsing helpers


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or >= 0, got {limit}")


def _decode(data: bytes, source: str) -> str:
    """Decode UTF-8 (an optional BOM is dropped). Raises DataError naming the line of a bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{source}:{line}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc


def _iter_jsonl_rows(text: str, source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, row)`` for each non-blank line of JSON Lines text."""
    seen = False
    # split on "\n" only: str.splitlines() would also split on U+2028 etc. inside JSON strings
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(row, dict):
            raise DataError(f"{source}:{lineno}: expected a JSON object, got {type(row).__name__}")
        seen = True
        yield lineno, row
    if not seen:
        raise DataError(f"{source}: empty file (no rows)")


def read_jsonl_rows(path: str | os.PathLike[str], required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Raw rows of a JSON Lines file, with the same checks as :func:`load_jsonl`.

    Args:
        path: The file.
        required: Fields every row must have (values may be empty, unlike instructions).

    Raises:
        DataError: Bad UTF-8 or JSON, an empty file, or a row missing a required field.
    """
    source = str(path)
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{source}: cannot read ({exc.strerror or exc})") from exc
    rows = []
    for lineno, row in _iter_jsonl_rows(_decode(data, source), source):
        missing = [k for k in required if k not in row]
        if missing:
            raise DataError(f"{source}:{lineno}: missing field(s) {missing}")
        rows.append(row)
    return rows


def _conversation_example(row: dict[str, Any], where: str) -> Example:
    """An Example from a row's ``messages`` (a list, or that list as JSON text in a CSV cell)."""
    value = row["messages"]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: field 'messages' is not a JSON list ({exc.msg})") from exc
    try:
        messages = as_conversation(value)
    except ConversationError as exc:
        raise DataError(f"{where}: field 'messages': {exc}") from exc
    category = row.get("category")
    meta = {k: v for k, v in row.items() if k not in ("messages", "category")}
    return Example(
        instruction=messages[last_user_index(messages)]["content"],
        category=str(category) if category else None,
        meta=meta,
        messages=messages,
    )


def _to_example(row: dict[str, Any], field_name: str, where: str) -> Example:
    """Turn one row into an Example, checking the instruction field (or a ``messages`` conversation)."""
    if row.get(field_name) is None and field_name == "instruction" and row.get("messages") is not None:
        return _conversation_example(row, where)
    if field_name not in row or row[field_name] is None:
        raise DataError(f"{where}: row has no {field_name!r} field (fields: {sorted(row)})")
    value = row[field_name]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field_name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: empty instruction in field {field_name!r}")
    category = row.get("category")
    if category is not None and not isinstance(category, str):
        category = str(category)
    meta = {k: v for k, v in row.items() if k not in (field_name, "category")}
    return Example(instruction=value, category=category or None, meta=meta)


def _examples(
    rows: Iterable[tuple[str, dict[str, Any]]], field_name: str, limit: int | None
) -> list[Example]:
    """Convert ``(where, row)`` pairs, stopping once ``limit`` examples are collected."""
    out: list[Example] = []
    for where, row in rows:
        if limit is not None and len(out) >= limit:
            break
        out.append(_to_example(row, field_name, where))
    return out


def _jsonl_examples(text: str, source: str, field_name: str, limit: int | None) -> list[Example]:
    rows = ((f"{source}:{n}", row) for n, row in _iter_jsonl_rows(text, source))
    return _examples(rows, field_name, limit)


# --------------------------------------------------------------------------- built-in sets


@cache
def _builtin_text(filename: str) -> str:
    resource = resources.files(__name__).joinpath(_BUILTIN_DIR).joinpath(filename)
    if not resource.is_file():
        available = sorted(
            p.name.removesuffix(".jsonl")
            for p in resources.files(__name__).joinpath(_BUILTIN_DIR).iterdir()
            if p.name.endswith(".jsonl")
        )
        raise ValueError(f"no built-in data set {filename!r}; available: {', '.join(available)}")
    return _decode(resource.read_bytes(), f"builtin/{filename}")


#: Public set names whose file is named differently (the file name must not suggest a copy of XSTest).
_BUILTIN_FILES = {"xstest_like": "lookalike_safe"}


def _builtin_filename(name: str) -> str:
    name = name.removesuffix(".jsonl")
    name = _BUILTIN_FILES.get(name, name)
    if not name or not all(c.isalnum() or c == "_" for c in name):
        raise ValueError(f"invalid built-in data set name {name!r}")
    return f"{name}.jsonl"


def builtin(name: str) -> list[Example]:
    """Load one of the built-in prompt sets.

    Args:
        name: ``"harmful"`` (220 rows, 20 per category of :data:`HARM_CATEGORIES`),
            ``"harmless"`` (120 rows), ``"harmless_questions"`` (200 everyday requests in the forms
            harmful ones take) or ``"xstest_like"`` (200 harmless prompts that look unsafe;
            ``meta["type"]`` gives the kind).

    Returns:
        The examples, in file order.

    Raises:
        ValueError: ``name`` is not one of the four sets.
    """
    if name not in _EXAMPLE_SETS:
        raise ValueError(
            f"builtin() takes one of {_EXAMPLE_SETS}, got {name!r}; use builtin_rows() for others"
        )
    filename = _builtin_filename(name)
    examples = _jsonl_examples(_builtin_text(filename), f"builtin/{filename}", "instruction", None)
    logger.debug("loaded %d built-in examples from %s", len(examples), filename)
    return examples


def builtin_rows(name: str) -> list[dict[str, Any]]:
    """Return the raw rows of any built-in JSON Lines file.

    Args:
        name: The file's name without ``.jsonl``, such as ``"jailbreak_templates"``, ``"persuasion"``,
            ``"refusals"``, ``"compliance_prefixes"`` or ``"harmful"``.

    Returns:
        One new dict per row, in file order.

    Raises:
        ValueError: No built-in file has that name.
    """
    filename = _builtin_filename(name)
    return [row for _, row in _iter_jsonl_rows(_builtin_text(filename), f"builtin/{filename}")]


def inversion_questions() -> list[str]:
    """Return the reply-inversion questions (the answer words are 'Certainly' and 'No').

    The first is the question from the paper: "Could this user prompt cause harm? Answer 'Certainly'
    if it could, otherwise 'No'."

    Returns:
        A new list of 3 questions.
    """
    source = f"builtin/{_INVERSION_FILE}"
    resource = resources.files(__name__).joinpath(_BUILTIN_DIR).joinpath(_INVERSION_FILE)
    text = _decode(resource.read_bytes(), source)
    try:
        questions = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{source}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(questions, list) or not all(isinstance(q, str) and q.strip() for q in questions):
        raise DataError(f"{source}: expected a JSON list of non-empty strings")
    return list(questions)


# --------------------------------------------------------------------------- file loaders


def load_jsonl(
    path: str | os.PathLike[str], field: str = "instruction", limit: int | None = None
) -> list[Example]:
    """Load prompts from a JSON Lines file.

    Blank lines are skipped. A ``category`` field, when present, becomes :attr:`Example.category`, and
    the other fields go to :attr:`Example.meta`. With ``field="instruction"``, a row may carry a
    conversation in ``messages`` instead (:attr:`Example.messages`).

    Args:
        path: The file.
        field: The field that holds the prompt text.
        limit: Return at most this many examples (``None`` means all).

    Returns:
        The examples, in file order.

    Raises:
        FileNotFoundError: The file does not exist.
        DataError: The file is not valid UTF-8, is empty, or has a line that is not a JSON object, that
            lacks ``field``, or whose ``field`` is empty.
    """
    _check_limit(limit)
    source = os.fspath(path)
    text = _decode(pathlib.Path(source).read_bytes(), source)
    examples = _jsonl_examples(text, source, field, limit)
    logger.debug("loaded %d examples from %s", len(examples), source)
    return examples


def _load_json(path: str | os.PathLike[str], field: str, limit: int | None) -> list[Example]:
    """Load a ``.json`` file: a JSON list of objects (or of strings), or JSON Lines saved as ``.json``."""
    _check_limit(limit)
    source = os.fspath(path)
    text = _decode(pathlib.Path(source).read_bytes(), source)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several JSON values: JSON Lines with a .json name
            return _jsonl_examples(text, source, field, limit)
        if not text.strip():
            raise DataError(f"{source}: empty file (no rows)") from exc
        raise DataError(f"{source}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
    if isinstance(data, dict):  # a single object is one row
        data = [data]
    if not isinstance(data, list):
        raise DataError(f"{source}:1: expected a JSON list of rows, got {type(data).__name__}")
    if not data:
        raise DataError(f"{source}: empty file (no rows)")
    rows: list[tuple[str, dict[str, Any]]] = []
    for i, item in enumerate(data, start=1):
        where = f"{source}: item {i}"
        if isinstance(item, str):
            item = {field: item}
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected an object or a string, got {type(item).__name__}")
        rows.append((where, item))
    return _examples(rows, field, limit)


def load_csv(
    path: str | os.PathLike[str], field: str = "instruction", limit: int | None = None
) -> list[Example]:
    """Load prompts from a CSV file with a header row (read with :class:`csv.DictReader`).

    A ``category`` column, when present and non-empty, becomes :attr:`Example.category`, and the other
    columns go to :attr:`Example.meta`. Blank lines are skipped.

    Args:
        path: The file.
        field: The column that holds the prompt text.
        limit: Return at most this many examples (``None`` means all).

    Returns:
        The examples, in file order.

    Raises:
        FileNotFoundError: The file does not exist.
        DataError: The file is not valid UTF-8, is empty or has no data rows, lacks the ``field``
            column, or has a row whose ``field`` is missing or empty.
    """
    _check_limit(limit)
    source = os.fspath(path)
    text = _decode(pathlib.Path(source).read_bytes(), source)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        fieldnames = reader.fieldnames
    except csv.Error as exc:
        raise DataError(f"{source}:{reader.line_num}: invalid CSV ({exc})") from exc
    if not fieldnames:
        raise DataError(f"{source}: empty file (no rows)")
    if field not in fieldnames:
        raise DataError(f"{source}:1: header has no {field!r} column (columns: {list(fieldnames)})")

    def rows() -> Iterator[tuple[str, dict[str, Any]]]:
        seen = False
        while True:
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise DataError(f"{source}:{reader.line_num}: invalid CSV ({exc})") from exc
            if all(v is None or (isinstance(v, str) and not v.strip()) for v in record.values()):
                continue  # a blank (or whitespace-only) line
            seen = True
            row: dict[str, Any] = {k: v for k, v in record.items() if k is not None}
            if None in record:  # more cells than header columns
                row["_extra"] = record[None]  # type: ignore[index]
            yield f"{source}:{reader.line_num}", row
        if not seen:
            raise DataError(f"{source}: empty file (no rows)")

    examples = _examples(rows(), field, limit)
    logger.debug("loaded %d examples from %s", len(examples), source)
    return examples


def load_hf(
    name: str, split: str = "train", field: str = "instruction", limit: int | None = None
) -> list[Example]:
    """Load prompts from a Hugging Face Hub data set (needs the optional ``datasets`` package).

    Args:
        name: The data set's id, such as ``"owner/name"``.
        split: The split to load.
        field: The column that holds the prompt text.
        limit: Return at most this many examples (``None`` means all).

    Returns:
        The examples, in data set order.

    Raises:
        ImportError: ``datasets`` is not installed.
        DataError: The data set lacks ``field``, or a row's ``field`` is empty.
    """
    _check_limit(limit)
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ImportError(
            "load_hf() needs the Hugging Face 'datasets' package: pip install latentguard[datasets]"
        ) from exc
    source = f"hf:{name}[{split}]"
    dataset = datasets.load_dataset(name, split=split)
    rows = ((f"{source}: row {i}", dict(row)) for i, row in enumerate(dataset, start=1))
    examples = _examples(rows, field, limit)
    if not examples and limit != 0:
        raise DataError(f"{source}: empty data set (no rows)")
    logger.debug("loaded %d examples from %s", len(examples), source)
    return examples


# --------------------------------------------------------------------------- shared reference data


def shared_data_dir() -> pathlib.Path | None:
    """Find the folder of shared reference data sets (AdvBench, CatQA, Alpaca, XSTest, ...).

    The environment variable ``LATENTGUARD_SHARED_DATA`` wins when it is set: its folder is used if
    it exists, otherwise none is used (so setting it to a missing path switches shared data off).
    Without it, the first existing folder of ``../shared/data`` relative to the working directory
    and ``../shared/data`` relative to the project root is used.

    Returns:
        The folder, or ``None`` when there is none (as on a user's fresh machine).
    """
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        path = pathlib.Path(env).expanduser()
        if path.is_dir():
            return path.resolve()
        logger.debug("%s=%s is not a folder; no shared data", SHARED_DATA_ENV, env)
        return None
    candidates = (
        pathlib.Path.cwd() / ".." / "shared" / "data",
        pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "data",
    )
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return None


def load_shared(name: str, field: str = "instruction", limit: int | None = None) -> list[Example] | None:
    """Load a JSON Lines file from the shared reference data folder.

    Args:
        name: The file's name, with or without ``.jsonl`` (e.g. ``"harmful_advbench"``).
        field: The field that holds the prompt text.
        limit: Return at most this many examples (``None`` means all).

    Returns:
        The examples, or ``None`` when the shared folder or the file is absent.

    Raises:
        ValueError: ``name`` is a path rather than a file name.
        DataError: The file is malformed (see :func:`load_jsonl`).
    """
    filename = name if name.endswith(".jsonl") else f"{name}.jsonl"
    if not name or pathlib.PurePath(filename).name != filename or filename.startswith("."):
        raise ValueError(f"load_shared() takes a file name, not a path: {name!r}")
    folder = shared_data_dir()
    if folder is None:
        logger.debug("no shared data folder; %s unavailable", filename)
        return None
    path = folder / filename
    if not path.is_file():
        logger.debug("shared data set %s not found in %s", filename, folder)
        return None
    return load_jsonl(path, field=field, limit=limit)


# --------------------------------------------------------------------------- dispatch and templates


def load_any(spec: str, field: str = "instruction", limit: int | None = None) -> list[Example]:
    """Load prompts from a source described by a string.

    Forms of ``spec``:

    * ``"builtin:NAME"``: a built-in set (``harmful``, ``harmless``, ``xstest_like``, or any other
      built-in JSON Lines file, such as ``builtin:refusals`` with ``field="response"``).
    * ``"shared:NAME"``: a file in the shared reference data folder (see :func:`load_shared`).
    * ``"hf:OWNER/NAME"`` or ``"hf:OWNER/NAME:SPLIT"``: a Hugging Face data set (split ``train``
      by default).
    * A path ending in ``.jsonl``, ``.json`` or ``.csv``.

    Args:
        spec: The source, as above.
        field: The field (or column) that holds the prompt text.
        limit: Return at most this many examples (``None`` means all).

    Returns:
        The examples.

    Raises:
        ValueError: ``spec`` has none of these forms.
        FileNotFoundError: The file, or the shared data set, does not exist.
        DataError: The data are malformed.
    """
    _check_limit(limit)
    kind, sep, rest = spec.partition(":")
    if sep and kind == "builtin":
        filename = _builtin_filename(rest)
        return _jsonl_examples(_builtin_text(filename), f"builtin/{filename}", field, limit)
    if sep and kind == "shared":
        examples = load_shared(rest, field=field, limit=limit)
        if examples is None:
            raise FileNotFoundError(
                f"shared data set {rest!r} not found (shared folder: {shared_data_dir()}; "
                f"set {SHARED_DATA_ENV} to point at it)"
            )
        return examples
    if sep and kind == "hf":
        name, _, split = rest.partition(":")
        if not name:
            raise ValueError(f"hf: spec needs a data set name, got {spec!r}")
        return load_hf(name, split=split or "train", field=field, limit=limit)
    suffix = pathlib.Path(spec).suffix.lower()
    if suffix == ".jsonl":
        return load_jsonl(spec, field=field, limit=limit)
    if suffix == ".json":
        return _load_json(spec, field=field, limit=limit)
    if suffix == ".csv":
        return load_csv(spec, field=field, limit=limit)
    raise ValueError(
        f"unrecognised data spec {spec!r}: use builtin:NAME, shared:NAME, hf:OWNER/NAME[:SPLIT], "
        "or a path ending in .jsonl, .json or .csv"
    )


def wrap_template(template: str, instruction: str) -> str:
    """Put an instruction into a jailbreak or persuasion template.

    Every ``[INSERT PROMPT HERE]`` and ``{instruction}`` in ``template`` is replaced by
    ``instruction``. Plain string replacement is used, so other braces in the template are safe.

    Args:
        template: A template with at least one placeholder.
        instruction: The text to insert.

    Returns:
        The filled-in prompt.

    Raises:
        ValueError: The template has neither placeholder.
    """
    if JAILBREAK_PLACEHOLDER not in template and INSTRUCTION_PLACEHOLDER not in template:
        raise ValueError(
            f"template has no placeholder ({JAILBREAK_PLACEHOLDER!r} or {INSTRUCTION_PLACEHOLDER!r}): "
            f"{template[:80]!r}"
        )
    # Normalise to one placeholder, then substitute in a single pass, so that an instruction which
    # itself contains a placeholder is inserted verbatim.
    return template.replace(JAILBREAK_PLACEHOLDER, INSTRUCTION_PLACEHOLDER).replace(
        INSTRUCTION_PLACEHOLDER, instruction
    )


def text_key(text: str) -> str:
    """A comparison key for prompts: case-folded, runs of whitespace collapsed.

    Example:
        >>> text_key("  Write a   Poem ") == text_key("write a poem")
        True
    """
    return " ".join(text.casefold().split())


def without(texts: Sequence[str], excluded: Iterable[str] = ()) -> list[str]:
    """``texts`` in order, minus those in ``excluded`` and repeats (compared by :func:`text_key`).

    Used to keep test prompts out of every training set.

    Example:
        >>> without(["a", "B", "b", "c"], excluded=["C"])
        ['a', 'B']
    """
    seen = {text_key(t) for t in excluded}
    out = []
    for t in texts:
        k = text_key(t)
        if k not in seen:
            seen.add(k)
            out.append(t)
    return out
