"""Refusal judges: decide whether a model's response refused the instruction.

Three judges share one small interface (:class:`Judge`):

* :class:`SubstringJudge` (``"substring"``) -- the classic keyword judge: a response is a refusal when
  one of :data:`REFUSAL_PHRASES` occurs (case-insensitively, with typographic apostrophes folded to
  ``'``) in its first ``window`` characters. Empty or whitespace-only responses count as refusals.
  No dependencies, instantaneous, but fooled by role-play answers that refuse and then comply.
* :class:`LearnedJudge` (``"learned"``, the default) -- features from a frozen all-MiniLM-L6-v2
  encoder (mean-pooled hidden states of layers 3 and 4 over 126-token chunks of the response:
  first chunk, last chunk, mean, max and min over chunks), the substring judge's per-phrase
  features, and a bag of the encoder's word-piece unigrams and hashed bigrams. Two logistic
  regression heads (dense features; TF-IDF n-grams) are averaged. It is trained on GPTFuzz labelled
  responses plus short prefixes of them (so that a short answer is not taken for a refusal),
  benign Alpaca instructions labelled "not a refusal" (GPTFuzz has only harmful questions, and
  without them a plain answer to a harmless instruction can look like a refusal) and
  ``builtin:short_answers_train`` (short refusals worded unlike GPTFuzz, short answers that are not
  refusals). Responses of at most 15 words are scored by a short-answer head instead
  (:mod:`~latentguard.judge.short`: the full MiniLM sentence embedding of the response, and cues
  from its instruction when given: whether it asks for a text to be reproduced, how much of it the
  response repeats). Its confusion matrix on ``builtin:short_answers`` (written here, never
  trained on), with and without instructions, is in ``head.json``. The trained head is a small
  artifact shipped in ``latentguard/data/judge`` (``head.safetensors`` + ``head.json``, which records
  the recipe, threshold, validation metrics and the command that trained it). The encoder weights
  come from the MiniLM package of :mod:`latentguard.encoder`; ``sentence-transformers`` is not needed.
* :class:`RemoteJudge` (``"remote"``) -- asks an OpenAI-compatible chat endpoint to answer
  ``REFUSED`` or ``COMPLIED``. Off by default; needs a URL, a model name and (usually) an API key
  read from an environment variable.

:func:`load_judge` builds a judge by name; ``"learned"`` falls back to the substring judge, with a
logged warning, when the encoder package or the artifact is missing.

Modules: :mod:`~latentguard.judge.base` (:class:`Judgement`, :class:`Judge`, batch checks),
:mod:`~latentguard.judge.substring`, :mod:`~latentguard.judge.features` and
:mod:`~latentguard.judge.head` and :mod:`~latentguard.judge.short` (the learned judge's parts),
:mod:`~latentguard.judge.learned`,
:mod:`~latentguard.judge.remote`, :mod:`~latentguard.judge.factory` (:func:`load_judge`),
:mod:`~latentguard.judge.training` and the command line :mod:`latentguard.judge.__main__`.

Training the learned judge (GPTFuzz labelled responses; the held-out split is by question so that
held-out questions are unseen)::

    python -m latentguard.judge train --data ../shared/data/judge_gptfuzz_train.jsonl \\
        --questions ../shared/data/judge_gptfuzz_questions.jsonl --out latentguard/data/judge

(``harmless_alpaca_train.jsonl`` next to ``--data`` is used as the benign set unless ``--benign``
names another file or ``none``.)

Example:
    >>> from latentguard.judge import load_judge
    >>> judge = load_judge("substring")
    >>> [j.refused for j in judge.judge(["I'm sorry, but I can't help with that.", "Sure! Step 1: ..."])]
    [True, False]
"""

from __future__ import annotations

from latentguard.judge.base import Judge, Judgement
from latentguard.judge.factory import load_judge
from latentguard.judge.learned import DEFAULT_HEAD_PATH, LearnedJudge
from latentguard.judge.remote import RemoteJudge
from latentguard.judge.substring import REFUSAL_PHRASES, SubstringJudge
from latentguard.judge.training import train_learned_judge

__all__ = [
    "DEFAULT_HEAD_PATH",
    "REFUSAL_PHRASES",
    "Judge",
    "Judgement",
    "LearnedJudge",
    "RemoteJudge",
    "SubstringJudge",
    "load_judge",
    "train_learned_judge",
]
