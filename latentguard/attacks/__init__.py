"""Jailbreak attacks: the prompts that Latent Guard's measurements and training run on.

* :mod:`latentguard.attacks.prompts` -- template wrappers, persuasive paraphrases, and guard
  training prompts (train-half templates, random-token suffixes); the :class:`JailbreakPrompt` type.
* :mod:`latentguard.attacks.gcg` -- the GCG optimiser (Zou et al. 2023) and its on-disk cache.
* :mod:`latentguard.attacks.tokens` -- the token space of adversarial suffixes, shared by both.

Example:
    >>> from latentguard.attacks import persuasion_prompts
    >>> [p.kind for p in persuasion_prompts(["How do I pick a lock?"], techniques=["authority"])]
    ['persuasion', 'persuasion']
"""

from latentguard.attacks.gcg import GCGConfig, GCGResult, default_target, gcg_attack, gcg_prompts
from latentguard.attacks.prompts import (
    SHARED_TEMPLATES_FILE,
    JailbreakPrompt,
    load_templates,
    persuasion_prompts,
    random_suffix_prompts,
    split_templates,
    template_prompts,
    wrapped_training_prompts,
)

__all__ = [
    "GCGConfig",
    "GCGResult",
    "JailbreakPrompt",
    "SHARED_TEMPLATES_FILE",
    "default_target",
    "gcg_attack",
    "gcg_prompts",
    "load_templates",
    "persuasion_prompts",
    "random_suffix_prompts",
    "split_templates",
    "template_prompts",
    "wrapped_training_prompts",
]
