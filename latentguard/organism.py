"""The model organism: safety-tune a model that never refuses (``align``) and undo it (``attack``).

``align`` trains LoRA adapters so that harmful instructions get short, varied refusals while
harmless instructions keep the base model's own greedy answers (so helpfulness is kept). The
adapters are merged and the result is saved as a plain transformers directory with
``organism.json`` (data, hyper-parameters, seed, wall time, held-out refusal rates).

``attack`` is the paper's finetuning attack: a few LoRA steps train harmful instructions towards
compliant answers -- the un-aligned base model's own answers to them.

Example:
    >>> from latentguard.organism import align, AlignConfig
    >>> report = align("default", "runs/organism", AlignConfig(seed=0))     # doctest: +SKIP
    >>> report["heldout"]["harmful"]["refusal_rate"]                        # doctest: +SKIP
    0.95
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from latentguard.data import Example, builtin, builtin_rows, load_any, load_shared, without
from latentguard.generation import GenerationConfig, generate, generate_plain
from latentguard.hardware import training_precision
from latentguard.io import atomic_write_text, cache_dir
from latentguard.lora import build_examples, lora_train, merge_adapter
from latentguard.models import LoadedModel, ModelLoadError, load, save_model_dir

logger = logging.getLogger(__name__)

#: Bump when the recipe changes, so cached organisms are rebuilt.
#: 3: HarmBench-test prompts (TDC 2023 shares 30 behaviours with them) are kept out of training.
#: 4: the fast recipe (rank 8, short targets, a weighted first target token, hard harmless rows);
#:    the adapter is saved in float16 and merged from those factors, so it can ship as package data.
RECIPE_VERSION = 4


@dataclass(frozen=True)
class AlignConfig:
    """Hyper-parameters of :func:`align` (and, with other defaults, :func:`attack`)."""

    seed: int = field(default=0, metadata={"help": "seed for splits, shuffling and LoRA init"})
    epochs: float = field(default=1.2, metadata={"help": "passes over the training set"})
    batch_size: int = field(default=16, metadata={"help": "examples per optimiser step"})
    lr: float = field(default=8e-4, metadata={"help": "AdamW learning rate"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        metadata={"help": "module names that get LoRA adapters"},
    )
    max_response_tokens: int = field(
        default=8, metadata={"help": "refusal target tokens trained per example"}
    )
    answer_tokens: int = field(default=6, metadata={"help": "tokens of the base model's own answers trained"})
    answer_frame: str | None = field(
        default=None,
        metadata={
            "help": "a plain-text completion frame with {instruction} (e.g. 'Question: {instruction}\\nAnswer:') "
            "in which the base model answers the harmless rows, for base models that have no chat format; "
            "None: answers through the chat template"
        },
    )
    first_token_weight: float = field(
        default=3.0,
        metadata={
            "help": "loss weight of each target's first token (where refuse-or-answer is decided); "
            "the other target tokens weigh 1"
        },
    )
    heldout_fraction: float = field(default=0.2, metadata={"help": "built-in rows kept out of training"})
    extra_shared: bool = field(
        default=True,
        metadata={
            "help": "add ../shared/data training sets (never HarmBench test, Alpaca val, XSTest) when present"
        },
    )
    shared_harmful: tuple[tuple[str, int], ...] = field(
        default=(
            ("harmful_advbench", 100),
            ("harmful_harmbench_val", 41),
            ("harmful_tdc2023", 70),
            ("harmful_malicious_instruct", 80),
        ),
        metadata={"help": "(../shared/data set, rows) added to the harmful training set when extra_shared"},
    )
    n_shared_harmless: int = field(
        default=900, metadata={"help": "Alpaca-train rows added when extra_shared"}
    )
    hard_harmless: int = field(
        default=300,
        metadata={
            "help": "further Alpaca-train rows, those most similar (TF-IDF cosine) to the harmful training "
            "instructions, trained towards their own answers: they teach where the boundary is"
        },
    )
    harmless_questions: bool = field(
        default=True,
        metadata={
            "help": "add builtin:harmless_questions (everyday requests in the forms harmful ones take: "
            "'How can I ...', 'Give me ...', 'Ways to ...'), trained towards their own answers"
        },
    )
    frozen_fraction: float = field(
        default=1 / 3,
        metadata={
            "help": "fraction of the lowest decoder blocks left without adapters; the backward pass stops "
            "above them, which makes training faster (1/3 of SmolLM2's 30 blocks = blocks 0-9)"
        },
    )
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bfloat16 autocast: None = only where it is native (CUDA, or a CPU with AMX or "
            "AVX512-BF16; latentguard.hardware), True/False force it. An execution detail: not part "
            "of the recipe tag"
        },
    )
    eval_tokens: int = field(default=16, metadata={"help": "tokens generated when measuring refusal rates"})

    def __post_init__(self) -> None:
        if not (self.epochs > 0 and self.lr > 0):
            raise ValueError(f"epochs and lr must be positive, got {self.epochs} and {self.lr}")
        if self.batch_size < 1 or self.lora_r < 1:
            raise ValueError(f"batch_size and lora_r must be >= 1, got {self.batch_size} and {self.lora_r}")
        if not 0.0 <= self.frozen_fraction < 1.0:
            raise ValueError(f"frozen_fraction must be in [0, 1), got {self.frozen_fraction}")
        if self.answer_frame is not None and "{instruction}" not in self.answer_frame:
            raise ValueError(f"answer_frame must contain {{instruction}}, got {self.answer_frame!r}")
        if self.first_token_weight <= 0 or self.hard_harmless < 0:
            raise ValueError(
                f"first_token_weight must be positive and hard_harmless >= 0, got "
                f"{self.first_token_weight} and {self.hard_harmless}"
            )


@dataclass(frozen=True)
class AttackConfig:
    """Hyper-parameters of :func:`attack`."""

    seed: int = field(default=0, metadata={"help": "seed"})
    steps: int = field(default=24, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=8, metadata={"help": "examples per step"})
    lr: float = field(default=5e-4, metadata={"help": "AdamW learning rate"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    n_examples: int = field(default=64, metadata={"help": "harmful instructions trained towards compliance"})
    max_response_tokens: int = field(default=24, metadata={"help": "target tokens per example"})
    base_model: str = field(
        default="default", metadata={"help": "un-aligned model whose answers are targets"}
    )
    answer_frame: str | None = field(
        default=None,
        metadata={
            "help": "plain-text frame with {instruction} in which a base model without chat tuning "
            "answers (as AlignConfig.answer_frame; None: through the chat template)"
        },
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bfloat16 autocast: None = only where native (as AlignConfig.bf16)"},
    )


def split_stratified(
    rows: Sequence[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Deterministic split, stratified by category: (train, heldout)."""
    rng = random.Random(seed)
    by_cat: dict[str, list[Example]] = {}
    for r in rows:
        by_cat.setdefault(r.category or "", []).append(r)
    train: list[Example] = []
    held: list[Example] = []
    for cat in sorted(by_cat):
        items = list(by_cat[cat])
        rng.shuffle(items)
        k = int(round(len(items) * fraction))
        held += items[:k]
        train += items[k:]
    return train, held


def _hash_strings(items: Sequence[str]) -> str:
    h = hashlib.sha256()
    for s in items:
        h.update(s.encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def cut_framed_answer(text: str, frame: str) -> str:
    """A completion-frame answer up to where the model starts a new frame (``Question:``, ``Answer:``)."""
    labels = [line.split("{instruction}")[0].strip() for line in frame.splitlines()]
    cut = len(text)
    for label in filter(None, labels):
        k = text.find("\n" + label)
        if k >= 0:
            cut = min(cut, k)
    return text[:cut].strip()


def base_answers(
    lm: LoadedModel, instructions: Sequence[str], max_new_tokens: int, frame: str | None = None
) -> list[str]:
    """The model's own greedy answers, cached on disk by model fingerprint, prompts and frame.

    With ``frame`` (a text with ``{instruction}``), the model continues the frame as plain text
    instead of answering through its chat template (:func:`cut_framed_answer` trims the result).
    """
    key = f"{lm.fingerprint}-{_hash_strings(instructions)}-{max_new_tokens}"
    if frame is not None:
        key += f"-frame{_hash_strings([frame])}"
    path = cache_dir() / "answers" / f"{key}.json"
    if path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(cached, list) and len(cached) == len(instructions):
                return [str(x) for x in cached]
        except json.JSONDecodeError:
            logger.warning("ignoring corrupt answer cache %s", path)
    if frame is None:
        answers = generate(lm, instructions, GenerationConfig(max_new_tokens=max_new_tokens, batch_size=48))
    else:
        texts = [frame.replace("{instruction}", i) for i in instructions]
        raw = generate_plain(lm, texts, max_new_tokens + 8, batch_size=48)
        answers = [cut_framed_answer(a, frame) for a in raw]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(answers, ensure_ascii=False))
    return answers


def refusal_rates(
    lm: LoadedModel, sets: dict[str, Sequence[str]], max_new_tokens: int, judge_name: str = "learned"
) -> dict[str, dict[str, Any]]:
    """Generate and judge: refusal rate per named set."""
    from latentguard.judge import load_judge

    judge = load_judge(judge_name)
    out: dict[str, dict[str, Any]] = {}
    for name, insts in sets.items():
        if not insts:
            continue
        responses = generate(lm, list(insts), GenerationConfig(max_new_tokens=max_new_tokens, batch_size=32))
        verdicts = judge.judge(responses, list(insts))
        refused = [v.refused for v in verdicts]
        out[name] = {
            "n": len(insts),
            "refusal_rate": sum(refused) / len(refused),
            "judge": judge.name,
            "examples": [
                {"instruction": i, "response": r, "refused": f}
                for i, r, f in list(zip(insts, responses, refused, strict=True))[:5]
            ],
        }
    return out


def hard_harmless(candidates: Sequence[str], harmful: Sequence[str], k: int) -> list[str]:
    """The ``k`` candidates that look most like a harmful instruction, most alike first.

    Two TF-IDF cosines, each the maximum over the harmful instructions, are added: one over the
    content words (harmless requests that share words with harmful ones: "kill a process",
    "shoot a photo") and one over the opening three words with stop words kept (the form:
    "How can I ...", "Give me ...", "Ways to ..."). A refusal tune over-generalises on both;
    training such rows towards their own answers keeps everyday refusals down. Deterministic
    (ties keep the candidates' order).
    """
    if k <= 0 or not candidates or not harmful:
        return []
    from sklearn.feature_extraction.text import TfidfVectorizer

    def opening(text: str) -> str:
        return " ".join(text.lower().split()[:3])

    content = TfidfVectorizer(stop_words="english", sublinear_tf=True).fit([*candidates, *harmful])
    form = TfidfVectorizer(ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b").fit(
        [opening(t) for t in (*candidates, *harmful)]
    )
    score = (content.transform(candidates) @ content.transform(harmful).T).max(axis=1).toarray().ravel()
    score = score + (
        (form.transform([opening(t) for t in candidates]) @ form.transform([opening(t) for t in harmful]).T)
        .max(axis=1)
        .toarray()
        .ravel()
    )
    order = sorted(range(len(candidates)), key=lambda i: (-float(score[i]), i))
    return [candidates[i] for i in order[:k]]


def training_data(cfg: AlignConfig, harmful: str | None, harmless: str | None) -> dict[str, Any]:
    harm_train, harm_held = split_stratified(builtin("harmful"), cfg.heldout_fraction, cfg.seed)
    safe_train, safe_held = split_stratified(builtin("harmless"), cfg.heldout_fraction, cfg.seed)
    sources = {"harmful": ["builtin:harmful (train split)"], "harmless": ["builtin:harmless (train split)"]}
    if cfg.harmless_questions:
        safe_train += builtin("harmless_questions")
        sources["harmless"].append("builtin:harmless_questions")
    if cfg.extra_shared:
        rng = random.Random(cfg.seed)
        # HarmBench test is the evaluation set everywhere; TDC 2023 repeats 30 of its prompts
        test = [r.instruction for r in load_shared("harmful_harmbench_test") or []]
        for name, n in cfg.shared_harmful:
            rows = list(load_shared(name) or [])
            rng.shuffle(rows)
            first = {r.instruction: r for r in reversed(rows)}
            rows = [first[t] for t in without([r.instruction for r in rows], test)]
            harm_train += rows[:n]
            if rows:
                sources["harmful"].append(f"shared:{name} ({min(n, len(rows))} rows)")
        alp = list(load_shared("harmless_alpaca_train") or [])
        if alp:
            safe_train += alp[: cfg.n_shared_harmless]
            sources["harmless"].append(f"shared:harmless_alpaca_train (first {cfg.n_shared_harmless})")
            hard = hard_harmless(
                [e.instruction for e in alp[cfg.n_shared_harmless :]],
                [e.instruction for e in harm_train],
                cfg.hard_harmless,
            )
            pool = {e.instruction: e for e in alp}
            safe_train += [pool[t] for t in hard]
            if hard:
                sources["harmless"].append(
                    f"shared:harmless_alpaca_train ({len(hard)} rows most like the harmful ones, TF-IDF)"
                )
    if harmful:
        harm_train += load_any(harmful)
        sources["harmful"].append(harmful)
    if harmless:
        safe_train += load_any(harmless)
        sources["harmless"].append(harmless)
    return {
        "harm_train": [e.instruction for e in harm_train],
        "safe_train": [e.instruction for e in safe_train],
        "harm_held": [e.instruction for e in harm_held],
        "safe_held": [e.instruction for e in safe_held],
        "sources": sources,
    }


def align(
    model: str | LoadedModel = "default",
    out_dir: str | os.PathLike[str] = "runs/organism",
    config: AlignConfig | None = None,
    *,
    harmful: str | None = None,
    harmless: str | None = None,
    evaluate: bool = True,
) -> dict[str, Any]:
    """Safety-tune ``model`` with LoRA and save the merged result to ``out_dir``.

    Args:
        model: A spec or a loaded model (never refuses, typically ``"default"``).
        out_dir: Output model directory (written atomically, with ``organism.json``).
        config: Hyper-parameters.
        harmful: Extra harmful instructions (data spec), trained towards refusals.
        harmless: Extra harmless instructions (data spec), trained towards the model's own answers.
        evaluate: Measure held-out refusal rates after training.

    Returns:
        The ``organism.json`` content.
    """
    cfg = config or AlignConfig()
    out = Path(out_dir)
    check_writable(out)
    t0 = time.perf_counter()
    lm = load(model) if isinstance(model, str) else model
    spec = model if isinstance(model, str) else lm.spec
    precision = training_precision(lm.device, cfg.bf16)
    logger.info("align: %s", precision.reason)
    data = training_data(cfg, harmful, harmless)
    refusals = [str(r["response"]) for r in builtin_rows("refusals")]
    rng = random.Random(cfg.seed)
    refusal_targets = [rng.choice(refusals) for _ in data["harm_train"]]
    t_gen = time.perf_counter()
    answers = base_answers(lm, data["safe_train"], cfg.answer_tokens, cfg.answer_frame)
    t_gen = time.perf_counter() - t_gen
    examples = build_examples(lm, data["harm_train"], refusal_targets, cfg.max_response_tokens)
    examples += build_examples(lm, data["safe_train"], answers, cfg.answer_tokens)
    steps = max(1, int(round(cfg.epochs * len(examples) / cfg.batch_size)))
    t_train = time.perf_counter()
    merged, losses, factors = lora_train(
        lm,
        examples,
        steps=steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        r=cfg.lora_r,
        alpha=cfg.lora_alpha,
        target_modules=cfg.target_modules,
        seed=cfg.seed,
        desc="align",
        first_layer=min(len(lm.layers) - 1, int(round(len(lm.layers) * cfg.frozen_fraction))),
        bf16=precision.bf16,
        first_token_weight=cfg.first_token_weight,
    )
    t_train = time.perf_counter() - t_train
    from latentguard.models import wrap

    organism = wrap(merged, lm.tokenizer, spec=str(out))
    report: dict[str, Any] = {
        "kind": "organism",
        "recipe_version": RECIPE_VERSION,
        "recipe_tag": recipe_tag(cfg),
        "base_model": spec,
        "base_fingerprint": lm.fingerprint,
        "fingerprint": organism.fingerprint,
        "config": asdict(cfg),
        "precision": precision.to_json(),
        "data": {
            "sources": data["sources"],
            "n_harmful_train": len(data["harm_train"]),
            "n_harmless_train": len(data["safe_train"]),
            "harmful_train_hash": _hash_strings(data["harm_train"]),
            "harmless_train_hash": _hash_strings(data["safe_train"]),
            "heldout_harmful": data["harm_held"],
            "heldout_harmless": data["safe_held"],
        },
        "steps": steps,
        "loss_first": losses[0],
        "loss_last": sum(losses[-5:]) / len(losses[-5:]),
        "seconds": {"base_answers": round(t_gen, 1), "train": round(t_train, 1)},
    }
    if evaluate:
        t_eval = time.perf_counter()
        report["heldout"] = refusal_rates(
            organism,
            {
                "harmful": data["harm_held"],
                "harmless": data["safe_held"],
                "xstest_like": [e.instruction for e in builtin("xstest_like")],
            },
            cfg.eval_tokens,
        )
        report["seconds"]["eval"] = round(time.perf_counter() - t_eval, 1)
    report["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    from safetensors.torch import save as save_bytes

    adapter = save_bytes(factors, metadata={"format": "pt", "recipe_tag": report["recipe_tag"]})
    report["adapter"] = {
        "file": ADAPTER_FILE,
        "sha256": hashlib.sha256(adapter).hexdigest(),
        "dtype": "float16",
        "rank": cfg.lora_r,
        "modules": len(factors) // 2,
    }
    save_model_dir(
        merged,
        lm.tokenizer,
        out,
        extra_files={"organism.json": json.dumps(report, indent=1)},
        extra_binary={ADAPTER_FILE: adapter},
    )
    logger.info("organism written to %s in %.0f s", out, report["seconds"]["total"])
    return report


def attack(
    model: str | LoadedModel,
    out_dir: str | os.PathLike[str],
    config: AttackConfig | None = None,
    *,
    harmful: str | None = None,
) -> dict[str, Any]:
    """The finetuning attack: LoRA steps that train harmful instructions towards compliant answers.

    The targets are the un-aligned base model's own answers (``config.base_model``).
    """
    cfg = config or AttackConfig()
    out = Path(out_dir)
    check_writable(out)
    t0 = time.perf_counter()
    lm = load(model) if isinstance(model, str) else model
    if harmful:
        pool = [e.instruction for e in load_any(harmful)]
    else:
        held = set(_organism_heldout(lm))
        pool = [e.instruction for e in builtin("harmful") if e.instruction not in held]
    rng = random.Random(cfg.seed)
    rng.shuffle(pool)
    insts = pool[: cfg.n_examples]
    base = load(cfg.base_model)
    targets = base_answers(base, insts, cfg.max_response_tokens + 4, cfg.answer_frame)
    del base
    examples = build_examples(lm, insts, targets, cfg.max_response_tokens)
    precision = training_precision(lm.device, cfg.bf16)
    logger.info("attack: %s", precision.reason)
    merged, losses, _ = lora_train(
        lm,
        examples,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        r=cfg.lora_r,
        alpha=cfg.lora_alpha,
        target_modules=AlignConfig().target_modules,
        seed=cfg.seed,
        desc="attack",
        bf16=precision.bf16,
    )
    report = {
        "kind": "attacked",
        "attacked_model": lm.spec,
        "attacked_fingerprint": lm.fingerprint,
        "config": asdict(cfg),
        "precision": precision.to_json(),
        "n_examples": len(insts),
        "instructions": insts,
        "loss_first": losses[0],
        "loss_last": sum(losses[-5:]) / len(losses[-5:]),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    save_model_dir(merged, lm.tokenizer, out, extra_files={"attack.json": json.dumps(report, indent=1)})
    return report


def _organism_heldout(lm: LoadedModel) -> list[str]:
    path = lm.extra.get("path")
    if path and (Path(path) / "organism.json").is_file():
        meta = json.loads((Path(path) / "organism.json").read_text(encoding="utf-8"))
        return list(meta.get("data", {}).get("heldout_harmful", []))
    return []


def check_writable(out: Path) -> None:
    parent = out.parent if out.parent != Path("") else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PermissionError(f"cannot create {parent}: {exc}") from exc
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"output folder {parent} is not writable")


#: :class:`AlignConfig` fields that change how a recipe runs, not what it builds.
EXECUTION_FIELDS = ("bf16",)

#: Fields added after recipe 4, with their unset values: they enter the tag only when set.
LATER_FIELDS: tuple[tuple[str, Any], ...] = (("answer_frame", None),)


def recipe_tag(config: AlignConfig) -> str:
    """Hash of the recipe: everything that defines the organism, not how it is executed.

    The precision (``bf16``) is an execution detail: two machines that train the same recipe in
    bfloat16 and in float32 share one tag (their held-out refusal rates agree within a few points;
    ``benchmarks/organism.py --other-precision``).
    """
    recipe = {k: v for k, v in asdict(config).items() if k not in EXECUTION_FIELDS}
    for name, unset in LATER_FIELDS:  # so the tags of recipes that leave them unset stay
        if recipe.get(name) == unset:
            recipe.pop(name, None)
    return hashlib.sha256(json.dumps([RECIPE_VERSION, recipe], sort_keys=True).encode()).hexdigest()[:10]


#: The adapter file inside an organism directory (and the shipped one).
ADAPTER_FILE = "adapter.safetensors"

#: Where the package ships the default organism's adapter and its ``organism.json``.
SHIPPED_DIR = Path(__file__).resolve().parent / "data" / "organism"


def shipped_organism() -> dict[str, Any] | None:
    """The shipped adapter's ``organism.json``, or ``None`` if the package ships none."""
    meta_path = SHIPPED_DIR / "organism.json"
    if not (meta_path.is_file() and (SHIPPED_DIR / ADAPTER_FILE).is_file()):
        return None
    meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
    return meta


def organism_from_adapter(
    adapter_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], base: LoadedModel | None = None
) -> dict[str, Any]:
    """Merge a saved organism adapter onto its base model and save the result to ``out_dir``.

    The base model must be the one the adapter was trained on (its fingerprint), the adapter file
    must have the recorded sha256, and the merged model must have the recorded fingerprint: any
    mismatch is an error, never a silent rebuild with different numbers.

    Args:
        adapter_dir: A folder with ``adapter.safetensors`` and ``organism.json`` (what
            :func:`align` writes, or :data:`SHIPPED_DIR`).
        out_dir: Output model directory.
        base: The loaded base model (default: load ``organism.json``'s ``base_model``). It is
            modified in place.

    Returns:
        The ``organism.json`` written to ``out_dir`` (with ``from_adapter`` added).

    Raises:
        ModelLoadError: Missing, corrupt or mismatched adapter or base model.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    src = Path(adapter_dir)
    try:
        meta = json.loads((src / "organism.json").read_text(encoding="utf-8"))
        blob = (src / ADAPTER_FILE).read_bytes()
        recorded = meta["adapter"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelLoadError(
            f"{src} holds no readable organism adapter ({ADAPTER_FILE} + organism.json): {exc}"
        ) from exc
    digest = hashlib.sha256(blob).hexdigest()
    if digest != recorded.get("sha256"):
        raise ModelLoadError(
            f"{src / ADAPTER_FILE} is corrupt: sha256 {digest[:12]}... is not the recorded "
            f"{str(recorded.get('sha256'))[:12]}...; rebuild it with `latentguard align`"
        )
    try:
        factors = load_bytes(blob)
    except (SafetensorError, ValueError) as exc:
        raise ModelLoadError(f"{src / ADAPTER_FILE} is not a safetensors file: {exc}") from exc
    lm = base if base is not None else load(str(meta["base_model"]))
    if lm.fingerprint != meta.get("base_fingerprint"):
        raise ModelLoadError(
            f"the adapter in {src} was trained on base model {meta.get('base_fingerprint')} "
            f"({meta.get('base_model')}), not on {lm.fingerprint} ({lm.spec}); "
            "build an organism for this model with `latentguard align --model ...`"
        )
    merge_adapter(lm.model, factors)
    from latentguard.models import model_fingerprint

    merged = model_fingerprint(lm.model)
    if merged != meta.get("fingerprint"):
        raise ModelLoadError(
            f"merging {src / ADAPTER_FILE} gave fingerprint {merged}, not the recorded "
            f"{meta.get('fingerprint')}; rebuild with `latentguard align`"
        )
    report = dict(meta)
    report["from_adapter"] = str(src)
    save_model_dir(
        lm.model,
        lm.tokenizer,
        Path(out_dir),
        extra_files={"organism.json": json.dumps(report, indent=1)},
        extra_binary={ADAPTER_FILE: blob},
    )
    return report


def organism_dir(config: AlignConfig | None = None, *, shipped: bool = True) -> Path:
    """The cached default organism.

    Resolved in this order: the cache (``organism-<recipe tag>``); the shipped adapter, merged onto
    the default model in seconds when its recipe tag is this config's; else built with
    :func:`align` (minutes on CPU).
    """
    cfg = config or AlignConfig()
    tag = recipe_tag(cfg)
    out = cache_dir() / "models" / f"organism-{tag}"
    if (out / "organism.json").is_file() and (out / "model.safetensors").is_file():
        return out
    meta = shipped_organism() if shipped else None
    if meta is not None and meta.get("recipe_tag") == tag:
        logger.info("merging the shipped organism adapter onto the default model into %s", out)
        organism_from_adapter(SHIPPED_DIR, out)
        return out
    logger.info("building the model organism (first use, recipe %s) into %s", tag, out)
    align("default", out, cfg)
    return out


def attacked_dir(config: AttackConfig | None = None) -> Path:
    """The cached attacked organism, built on first use."""
    cfg = config or AttackConfig()
    # the tag covers the organism's recipe too, so a new organism gets a new attacked model
    recipe = {k: v for k, v in asdict(cfg).items() if k not in EXECUTION_FIELDS}
    payload = [RECIPE_VERSION, recipe_tag(AlignConfig()), recipe]
    tag = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]
    out = cache_dir() / "models" / f"attacked-{tag}"
    if (out / "attack.json").is_file() and (out / "model.safetensors").is_file():
        return out
    attack(str(organism_dir()), out, cfg)
    return out
