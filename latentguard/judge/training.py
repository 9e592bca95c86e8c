"""Train the learned judge's head on labelled responses (GPTFuzz) and write the artifact.

The rows are split by question (held-out questions are unseen); the training side is augmented with
short prefixes of its responses and with benign texts labelled "not a refusal"; the head
(:func:`latentguard.judge.head.fit_head`) is fitted on MiniLM features
(:func:`latentguard.judge.features.featurize`) and written as ``head.safetensors`` + ``head.json``.
The command line is ``python -m latentguard.judge train`` (see :mod:`latentguard.judge.__main__`)::

    python -m latentguard.judge train --data ../shared/data/judge_gptfuzz_train.jsonl \\
        --questions ../shared/data/judge_gptfuzz_questions.jsonl --out latentguard/data/judge
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latentguard.data import builtin_rows
from latentguard.encoder import MINILM_MODEL_NAME, MINILM_PIP_NAME, ChunkEncoder, load_minilm
from latentguard.judge.features import featurize
from latentguard.judge.head import LearnedHead, fit_head
from latentguard.judge.short import SHORT_MAX_WORDS, ShortHead, embed_pairs, fit_short_head, is_short
from latentguard.judge.substring import REFUSAL_PHRASES, SubstringJudge

__all__ = [
    "BENIGN_DEFAULT_NAME",
    "TRAIN_COMMAND",
    "prefix_augment",
    "read_jsonl",
    "read_texts",
    "short_answer_confusion",
    "train_learned_judge",
]

logger = logging.getLogger(__name__)

#: The command that trained the shipped head (recorded in ``head.json`` when none is given).
TRAIN_COMMAND = (
    "python -m latentguard.judge train --data ../shared/data/judge_gptfuzz_train.jsonl "
    "--questions ../shared/data/judge_gptfuzz_questions.jsonl --out latentguard/data/judge"
)
#: File looked for next to ``--data`` as benign (non-refusal) examples when ``--benign auto``.
BENIGN_DEFAULT_NAME = "harmless_alpaca_train.jsonl"
_BUILTIN_DIR = Path(__file__).resolve().parents[1] / "data" / "builtin"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON Lines file (blank lines skipped).

    Args:
        path: The file.

    Returns:
        One dict per non-blank line.

    Raises:
        ValueError: On invalid JSON, naming the file and 1-based line.
    """
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: invalid JSON ({exc})") from exc
    return rows


def read_texts(path: Path) -> list[str]:
    """The ``response``, ``text`` or ``instruction`` field of each JSON Lines row.

    Args:
        path: A JSON Lines file.

    Returns:
        The non-blank texts, in order.

    Raises:
        ValueError: If a row has none of the three fields.
    """
    out = []
    for n, row in enumerate(read_jsonl(path), 1):
        text = next(
            (row[k] for k in ("response", "text", "instruction") if isinstance(row.get(k), str)), None
        )
        if text is None:
            raise ValueError(f"{path}:{n}: needs a response, text or instruction field")
        if text.strip():
            out.append(text)
    return out


def prefix_augment(
    tokenizer: Any, texts: Sequence[str], y: np.ndarray, lengths: Sequence[int]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Short prefixes of the training responses, so that length alone does not signal a refusal.

    A prefix of ``n`` word pieces is kept, with its response's label, when the substring judge agrees:
    prefixes of refusals that contain a refusal phrase, and prefixes of compliant responses whose
    first 300 characters contain none (so a refuse-then-comply role play gives no prefix).

    Args:
        tokenizer: A fast tokenizer (``return_offsets_mapping`` is used).
        texts: The training responses.
        y: Their labels (1: refused).
        lengths: Prefix lengths in word pieces; a response needs more than ``n + 4`` of them.

    Returns:
        Prefix texts, their labels and the index of the response each came from.
    """
    sub = SubstringJudge()
    enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    out: list[str] = []
    labels: list[int] = []
    src: list[int] = []
    for i, text in enumerate(texts):
        offsets = enc["offset_mapping"][i]
        clean = not sub.is_refusal(text)
        for n in lengths:
            if len(offsets) <= n + 4:
                continue
            prefix = text[: offsets[n - 1][1]]
            if (y[i] == 1 and sub.is_refusal(prefix)) or (y[i] == 0 and clean):
                out.append(prefix)
                labels.append(int(y[i]))
                src.append(i)
    return out, np.array(labels, dtype=int), np.array(src, dtype=int)


def short_answer_confusion(judge: Any, with_instructions: bool = True) -> dict[str, Any]:
    """A judge's confusion matrix on ``builtin:short_answers`` (short refusals worded unlike GPTFuzz and
    short answers that are not refusals, written for this project and never trained on).

    Args:
        judge: Anything with ``judge(responses, instructions) -> [Judgement]``.
        with_instructions: Give the judge each answer's instruction (else responses only).

    Returns:
        ``accuracy``, ``n`` and the four counts (refusal is the positive class), plus the misjudged
        responses.
    """
    rows = builtin_rows("short_answers")
    y = np.array([int(r["refused"]) for r in rows])
    insts = [str(r.get("instruction") or "") for r in rows] if with_instructions else None
    pred = np.array([int(v.refused) for v in judge.judge([str(r["response"]) for r in rows], insts)])
    return {
        "accuracy": round(float((y == pred).mean()), 4),
        "n": len(rows),
        "with_instructions": with_instructions,
        "refusal_judged_refusal": int(((y == 1) & (pred == 1)).sum()),
        "refusal_judged_answer": int(((y == 1) & (pred == 0)).sum()),
        "answer_judged_refusal": int(((y == 0) & (pred == 1)).sum()),
        "answer_judged_answer": int(((y == 0) & (pred == 0)).sum()),
        "misjudged": [str(r["response"]) for r, a, b in zip(rows, y, pred, strict=True) if a != b],
    }


def _metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Accuracy and refusal precision, recall and F1 of 0/1 predictions (rounded to 4 places)."""
    tp = float(((pred == 1) & (y == 1)).sum())
    fp = float(((pred == 1) & (y == 0)).sum())
    fn = float(((pred == 0) & (y == 1)).sum())
    prec = tp / max(1.0, tp + fp)
    rec = tp / max(1.0, tp + fn)
    return {
        "accuracy": round(float((pred == y).mean()), 4) if len(y) else float("nan"),
        "refusal_precision": round(prec, 4),
        "refusal_recall": round(rec, 4),
        "refusal_f1": round(2 * prec * rec / max(1e-12, prec + rec), 4),
        "n": int(len(y)),
    }


def train_learned_judge(
    train_path: Path,
    questions_path: Path | None,
    out_dir: Path,
    seed: int = 0,
    val_fraction: float = 0.2,
    benign_path: Path | None = None,
    prefix_tokens: Sequence[int] = (12, 24, 48),
    feature_cache: Path | None = None,
    command: str | None = None,
    short_repeat: int = 0,
    short_C: float = 0.03,
    short_gptfuzz: int = 200,
    short_prefixes: int = 1500,
) -> dict[str, float]:
    """Train the learned judge's head and write ``head.safetensors`` + ``head.json`` to ``out_dir``.

    The rows (``question_index``, ``response``, ``complied``; ``complied`` 0/"0" means the model
    refused) are split by question (a grouped split: held-out questions are unseen) into train and
    validation sides. The training side is augmented with short prefixes of its responses (see
    :func:`prefix_augment`) and, when ``benign_path`` is given, with benign texts labelled
    "not a refusal" (GPTFuzz only has harmful questions, and without these a plain on-topic answer to
    a harmless instruction can look like a refusal). The shipped head is the one fitted on the train
    side of the group split, so its recorded group-split accuracy is that of the artifact itself;
    its threshold comes from grouped 3-fold CV on the train side. The same recipe is also fitted and
    scored on a random split, for reference, and the substring judge is scored on both.

    Args:
        train_path: JSON Lines with ``question_index``, ``response`` and ``complied``.
        questions_path: Optional JSON Lines with ``index`` and ``question``; used to check the
            question indices and to record the held-out questions.
        out_dir: Folder for the artifact (created).
        seed: Seed of the splits.
        val_fraction: Fraction of questions (group split) or rows (random split) held out; the same
            fraction of the benign texts is held out to measure false refusals.
        benign_path: Optional JSON Lines of benign non-refusal texts (``response``, ``text`` or
            ``instruction`` field), e.g. ``harmless_alpaca_train.jsonl``.
        prefix_tokens: Prefix lengths (word pieces) of the augmentation; empty to disable it.
        feature_cache: Optional ``.npz`` path caching the encoder features between runs.
        command: Command line recorded in ``head.json`` (default: the canonical training command).
        short_repeat: Times each row of ``builtin:short_answers_train`` (short refusals worded unlike
            GPTFuzz, short answers that are not refusals) is added to the main head's training side;
            0: none.
        short_C: Inverse L2 strength of the short-answer head (:mod:`latentguard.judge.short`),
            fitted on ``builtin:short_answers_train`` (with and without instructions) and on up to
            ``short_gptfuzz`` distinct short GPTFuzz responses of the training side (with their
            questions when ``questions_path`` is given); responses of at most
            :data:`~latentguard.judge.short.SHORT_MAX_WORDS` words are scored by it.
        short_gptfuzz: See ``short_C``.
        short_prefixes: At most this many short prefixes of training-side responses (of at most
            ``SHORT_MAX_WORDS`` words; :func:`prefix_augment`) are added to the short head's rows.

    Returns:
        Flat metrics: ``group_accuracy``, ``random_accuracy``, the substring judge's accuracies,
        ``threshold``, ``n_train`` and ``n_val`` (held-out GPTFuzz rows of the group split).
    """
    from safetensors.numpy import save_file
    from sklearn.model_selection import GroupShuffleSplit, ShuffleSplit

    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be in (0, 1)")
    t0 = time.time()
    rows = read_jsonl(Path(train_path))
    if not rows:
        raise ValueError(f"{train_path}: no rows")
    for n, r in enumerate(rows, 1):
        if not {"question_index", "response", "complied"} <= set(r):
            raise ValueError(f"{train_path}:{n}: needs question_index, response and complied")
        if str(r["complied"]) not in ("0", "1"):
            raise ValueError(f"{train_path}:{n}: complied must be 0 or 1, got {r['complied']!r}")
    texts = [str(r["response"]) for r in rows]
    y = np.array([int(str(r["complied"]) == "0") for r in rows])
    groups = np.array([str(r["question_index"]) for r in rows])
    question_text: dict[str, str] = {}
    if questions_path is not None:
        question_text = {str(q["index"]): str(q["question"]) for q in read_jsonl(Path(questions_path))}
        known = set(question_text)
        missing = sorted(set(groups) - known)
        if missing:
            logger.warning("%d question indices have no question text (e.g. %s)", len(missing), missing[:5])
    benign = read_texts(Path(benign_path)) if benign_path is not None else []

    recipe: dict[str, Any] = {
        "encoder": f"{MINILM_MODEL_NAME} (package {MINILM_PIP_NAME}), frozen",
        "layers": [3, 4],
        "chunk_tokens": 126,
        "max_chunks": 32,
        "pooling": "mean over tokens per chunk, L2-normalised; per layer: first chunk, last chunk, mean, max, min",
        "substring_features": "per REFUSAL_PHRASES hit in first/last 300 chars + 6 shape features",
        "phrases": list(REFUSAL_PHRASES),
        "ngrams": "word-piece unigrams + Fibonacci-hashed bigrams, sublinear TF-IDF, L2-normalised",
        "dense_head": "standardised logistic regression",
        "ngram_head": "logistic regression",
        "fusion": "score = (1 - ngram_weight) * p_dense + ngram_weight * p_ngram",
        "augmentation": {
            "prefix_tokens": [int(n) for n in prefix_tokens],
            "benign": "texts labelled not-refused" if benign else None,
            "short_answers_train": short_repeat,
        },
        "short_head": {
            "max_words": SHORT_MAX_WORDS,
            "features": "full MiniLM sentence embedding of the response + refusal phrase, instruction "
            "overlap, instruction asks for a text, instruction given",
            "C": short_C,
            "data": "builtin:short_answers_train with and without instructions + up to "
            f"{short_gptfuzz} distinct short GPTFuzz responses of the training side + up to "
            f"{short_prefixes} short prefixes of its longer responses",
        },
    }
    hp = {"dense_C": 0.01, "ngram_C": 10.0, "ngram_weight": 0.5}
    bigram_bits = 18

    encoder = ChunkEncoder(
        layers=recipe["layers"], chunk_tokens=recipe["chunk_tokens"], max_chunks=recipe["max_chunks"]
    )
    pre_texts, pre_y, pre_src = prefix_augment(encoder.tokenizer, texts, y, prefix_tokens)
    short_rows = builtin_rows("short_answers_train") if short_repeat > 0 else []
    short = [str(r["response"]) for r in short_rows] * short_repeat
    short_y = np.array([int(r["refused"]) for r in short_rows] * short_repeat, dtype=int)
    all_texts = texts + pre_texts + benign + short
    kind = np.array([0] * len(texts) + [1] * len(pre_texts) + [2] * len(benign) + [3] * len(short))
    # the dense features do not depend on the short head's recipe
    dense_recipe = {k: v for k, v in recipe.items() if k != "short_head"}
    key = json.dumps(
        {"recipe": dense_recipe, "n": [len(texts), len(pre_texts), len(benign), len(short)]}, sort_keys=True
    )
    dense: np.ndarray | None = None
    if feature_cache is not None and Path(feature_cache).is_file():
        with np.load(feature_cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                dense = np.asarray(z["dense"])
                logger.info("using cached features from %s", feature_cache)
    ids = encoder.tokenize(all_texts)
    if dense is None:
        logger.info(
            "encoding %d responses, %d prefixes and %d benign texts (several minutes on CPU)",
            len(texts),
            len(pre_texts),
            len(benign),
        )
        dense, ids = featurize(encoder, all_texts)
        if feature_cache is not None:
            Path(feature_cache).parent.mkdir(parents=True, exist_ok=True)
            np.savez(feature_cache, dense=dense, key=key)
    logger.info("features ready after %.0f s", time.time() - t0)

    y_all = np.concatenate([y, pre_y, np.zeros(len(benign), dtype=int), short_y])
    src = np.concatenate([np.arange(len(texts)), pre_src, np.full(len(benign) + len(short), -1)])
    g_all = np.concatenate(
        [
            groups,
            groups[pre_src] if len(pre_src) else np.array([], str),
            [f"benign-{i % 50}" for i in range(len(benign))],
            [f"short-{i % 10}" for i in range(len(short))],
        ]
    )
    rng = np.random.default_rng(seed)
    benign_val = np.zeros(len(y_all), dtype=bool)
    if benign:
        pick = rng.permutation(len(benign))[: int(round(val_fraction * len(benign)))]
        benign_val[len(texts) + len(pre_texts) + pick] = True

    substring = np.array([int(SubstringJudge().is_refusal(t)) for t in texts])
    builtin = {
        name: read_texts(_BUILTIN_DIR / f"{name}.jsonl")
        for name in ("refusals", "compliance_prefixes")
        if (_BUILTIN_DIR / f"{name}.jsonl").is_file()
    }
    builtin_feats = {name: featurize(encoder, t) for name, t in builtin.items()}

    minilm_tokenizer, minilm = load_minilm()
    short_train_rows = builtin_rows("short_answers_train")
    short_idx = np.array([i for i, t in enumerate(texts) if is_short(t)], dtype=int)
    short_feats = embed_pairs(
        minilm,
        minilm_tokenizer,
        [texts[i] for i in short_idx],
        [question_text.get(groups[i]) for i in short_idx],
    )
    # short prefixes of longer responses: what an answer cut after a few dozen tokens looks like
    pre_short = np.array([k for k, t in enumerate(pre_texts) if is_short(t)], dtype=int)
    pre_feats = embed_pairs(
        minilm,
        minilm_tokenizer,
        [pre_texts[k] for k in pre_short],
        [question_text.get(groups[pre_src[k]]) for k in pre_short],
    )
    builtin_short = embed_pairs(
        minilm,
        minilm_tokenizer,
        [str(r["response"]) for r in short_train_rows] * 2,
        [r.get("instruction") for r in short_train_rows] + [None] * len(short_train_rows),
    )
    builtin_short_y = np.array([int(r["refused"]) for r in short_train_rows] * 2, dtype=int)

    def fit_short(train_rows: np.ndarray) -> ShortHead:
        """The short head on the built-in short answers and the short GPTFuzz rows of ``train_rows``."""
        pick = np.flatnonzero(np.isin(short_idx, train_rows))
        _, first = np.unique([texts[short_idx[k]] for k in pick], return_index=True)
        pick = pick[np.sort(first)]
        pick = np.random.default_rng(seed).permutation(pick)[:short_gptfuzz]
        g_plain = embed_pairs(minilm, minilm_tokenizer, [texts[short_idx[k]] for k in pick], None)
        pre = np.flatnonzero(np.isin(pre_src[pre_short], train_rows))
        pre = np.random.default_rng(seed + 1).permutation(pre)[:short_prefixes]
        feats = np.vstack([builtin_short, short_feats[pick], g_plain, pre_feats[pre]])
        labels = np.concatenate(
            [builtin_short_y, y[short_idx[pick]], y[short_idx[pick]], pre_y[pre_short[pre]]]
        )
        return fit_short_head(feats, labels, C=short_C)

    results: dict[str, Any] = {}
    heads: dict[str, LearnedHead] = {}
    shorts: dict[str, ShortHead] = {}
    splits = {
        "group": next(
            GroupShuffleSplit(1, test_size=val_fraction, random_state=seed).split(texts, y, groups)
        )[1],
        "random": next(ShuffleSplit(1, test_size=val_fraction, random_state=seed).split(texts))[1],
    }
    for split, va in splits.items():
        va = np.sort(va)
        held = np.isin(src, va)
        train = ~held & ~benign_val
        tr_idx = np.flatnonzero(train)
        head = fit_head(
            dense[tr_idx],
            [ids[i] for i in tr_idx],
            y_all[tr_idx],
            g_all[tr_idx],
            encoder.vocab_size,
            bigram_bits,
            hp,
        )

        def predict(mask: np.ndarray, head: LearnedHead = head) -> np.ndarray:
            idx = np.flatnonzero(mask)
            assert dense is not None
            return (head.scores(dense[idx], [ids[i] for i in idx]) >= head.threshold).astype(int)

        short_head = fit_short(np.setdiff1d(np.arange(len(texts)), va))
        pred_va = predict(held & (kind == 0))  # rows of va, in order
        va_short = np.flatnonzero(np.isin(va, short_idx))
        if va_short.size:
            rows_in = np.searchsorted(short_idx, va[va_short])
            pred_va[va_short] = (short_head.scores(short_feats[rows_in]) >= short_head.threshold).astype(int)
        res: dict[str, Any] = {
            "learned": _metrics(y[va], pred_va),
            "learned_long_only": _metrics(y[va], predict(held & (kind == 0))),
            "short_rows_in_val": int(va_short.size),
            "substring": _metrics(y[va], substring[va]),
            "learned_on_held_out_prefixes": _metrics(y_all[held & (kind == 1)], predict(held & (kind == 1))),
            "n_train_rows": int(len(tr_idx)),
            "n_val": int(len(va)),
            "threshold": head.threshold,
        }
        if benign:
            res["benign_held_out_false_refusal_rate"] = round(float(predict(benign_val).mean()), 4)
        for name, (fd, fi) in builtin_feats.items():
            res[f"builtin_{name}_judged_refused"] = round(
                float((head.scores(fd, fi) >= head.threshold).mean()), 4
            )
        results[split] = res
        heads[split] = head
        shorts[split] = short_head
        logger.info("%s split: %s", split, json.dumps(res))

    head = heads["group"]
    va = np.sort(splits["group"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({**head.tensors(), **shorts["group"].tensors()}, str(out / "head.safetensors"))
    n_train = int(results["group"]["n_train_rows"])
    meta: dict[str, Any] = {
        "format": "latentguard-judge-head/1",
        "recipe": recipe,
        "hyperparameters": hp,
        **head.meta(),
        "short": shorts["group"].meta(),
        "threshold_selection": "grouped 3-fold CV accuracy on the train side of the group split",
        "labels": "refused = (complied == 0); prefixes keep their response's label; benign texts = not refused",
        "data": {
            "train": Path(train_path).name,
            "questions": Path(questions_path).name if questions_path is not None else None,
            "benign": Path(benign_path).name if benign_path is not None else None,
            "rows": len(rows),
            "prefixes": len(pre_texts),
            "benign_rows": len(benign),
            "short_answer_rows": len(short),
            "short_head_rows": len(short_train_rows),
            "refused_fraction": round(float(y.mean()), 4),
            "questions_total": int(len(np.unique(groups))),
        },
        "split": {
            "seed": seed,
            "val_fraction": val_fraction,
            "group": "sklearn GroupShuffleSplit by question_index; the shipped head is fitted on its train side",
            "random": "sklearn ShuffleSplit over responses (reference only; not shipped)",
            "held_out_questions": sorted(set(groups[va].tolist()), key=lambda s: (len(s), s)),
        },
        "validation": results,
        "n_train": n_train,
        "n_val": int(len(va)),
        "command": command or TRAIN_COMMAND,
        "date": _dt.date.today().isoformat(),
        "train_seconds": round(time.time() - t0, 1),
    }
    from latentguard.judge.learned import LearnedJudge

    (out / "head.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    shipped = LearnedJudge(head_path=out / "head.safetensors")
    meta["short_answers"] = short_answer_confusion(shipped)
    meta["short_answers_without_instructions"] = short_answer_confusion(shipped, with_instructions=False)
    (out / "head.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    logger.info("wrote %s (%.0f s)", out / "head.safetensors", time.time() - t0)
    return {
        "group_accuracy": results["group"]["learned"]["accuracy"],
        "random_accuracy": results["random"]["learned"]["accuracy"],
        "substring_group_accuracy": results["group"]["substring"]["accuracy"],
        "substring_random_accuracy": results["random"]["substring"]["accuracy"],
        "threshold": head.threshold,
        "n_train": float(n_train),
        "n_val": float(len(va)),
    }
