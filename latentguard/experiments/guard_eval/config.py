"""Options and columns of the guard evaluation (``latentguard guard eval``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

COLUMNS = (
    "TPR harmful",
    "TPR wrapped (all jailbreak prompts)",
    "TPR jailbreak (succeeded)",
    "FPR everyday",
    "FPR XSTest-style",
    "FPR wrapped everyday",
    "acc accepted-harmful",
    "acc refused-harmless",
    "AUROC",
    "TPR@1%FPR",
    "AUROC harmful vs XSTest-style",
    "FPR XSTest-style @95% TPR",
)
#: The columns backed by per-prompt harmful decisions (the rest are computed from scores).
DECISION_COLUMNS = COLUMNS[:8]
#: Recall at which :data:`COLUMNS`' matched-recall XSTest column thresholds every guard.
MATCHED_TPR = 0.95
#: The columns of the issue's bar: the Latent Guard must beat the other guards on these.
BAR_COLUMNS = ("TPR wrapped (all jailbreak prompts)", "TPR jailbreak (succeeded)", "FPR XSTest-style")

#: Columns where a correct decision is "not harmful" (the rest count harmful decisions as correct).
SAFE_COLUMNS = frozenset({"FPR everyday", "FPR XSTest-style", "FPR wrapped everyday", "acc refused-harmless"})


@dataclass(frozen=True)
class EvalConfig:
    """Sizes of the guard evaluation (each option documented in ``help``).

    Raises:
        ValueError: On construction, if an option is out of range.
    """

    quick: bool = field(default=False, metadata={"help": "small sets (CI)"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    use_shared: bool = field(default=True, metadata={"help": "use ../shared/data when present"})
    n_train_harmful: int | None = field(
        default=None, metadata={"help": "harmful training prompts (None = every one available)"}
    )
    n_train_harmless: int = field(default=1400, metadata={"help": "harmless training prompts"})
    n_test: int = field(default=150, metadata={"help": "prompts per test set"})
    n_templates: int = field(default=4, metadata={"help": "jailbreak templates per harmful test prompt"})
    n_train_wrapped: int = field(
        default=160,
        metadata={
            "help": "training prompts of each class also wrapped in jailbreak templates (the train half of "
            "the templates; the test jailbreaks use the other half)"
        },
    )
    n_train_suffixed: int = field(
        default=60,
        metadata={
            "help": "training prompts of each class also given a suffix of random tokens (GCG's search "
            "space, not optimised), so the activation guards learn to read through adversarial suffixes"
        },
    )
    n_train_obfuscated: int = field(
        default=150,
        metadata={
            "help": "training prompts of each class also obfuscated (random leetspeak, mixed case, spaces "
            "inside words, misspellings), as guard fit does by default; they never set the threshold"
        },
    )
    builtin_mix: bool = field(
        default=True,
        metadata={"help": "with shared data, mix in the built-in sets as guard fit does by default"},
    )
    lookalike_weight: float = field(
        default=3.0,
        metadata={
            "help": "training weight of the plain harmless lookalikes (XSTest's training half and the "
            "built-in ones) in the activation guards' fits, against 1 for every other prompt"
        },
    )
    n_gcg: int = field(
        default=8,
        metadata={
            "help": "harmful test prompts attacked with GCG adversarial suffixes against the model (0: none)"
        },
    )
    gcg_steps: int = field(default=20, metadata={"help": "GCG steps per prompt (results are cached)"})
    max_new_tokens: int = field(default=24, metadata={"help": "tokens generated to judge refusals"})
    repair: bool = field(default=True, metadata={"help": "also measure over-refusal repair on the test sets"})
    method: str = field(default="auto", metadata={"help": "Latent Guard method (auto/centroid/probe)"})
    small_data: bool = field(
        default=True,
        metadata={
            "help": "add the small-data row: guard fit's defaults on 200 AdvBench + 200 Alpaca-train "
            "prompts (one source each), judged on the same test sets (needs shared data)"
        },
    )
    n_robustness: int = field(
        default=100,
        metadata={
            "help": "harmful and everyday test prompts per obfuscation in the robustness table (0: no table)"
        },
    )
    n_conversations: int = field(
        default=100,
        metadata={
            "help": "two-turn conversations per kind in the conversation table (a harmful request after a "
            "harmless exchange; a harmless follow-up after a refused harmful request); 0: no table"
        },
    )
    categories: bool = field(
        default=True,
        metadata={
            "help": "fit the per-category head (the 11 CatQA categories, /v1/moderations) on CatQA and report "
            "its held-out accuracy per category (needs shared data)"
        },
    )
    batch_size: int = field(default=16, metadata={"help": "prompts per forward"})
    seeds: int = field(
        default=5,
        metadata={"help": "refit both activation guards with this many split seeds and report the spread"},
    )

    def __post_init__(self) -> None:
        if not (self.lookalike_weight > 0 and math.isfinite(self.lookalike_weight)):
            raise ValueError(f"lookalike_weight must be a positive number, got {self.lookalike_weight}")
        if self.n_train_suffixed < 0 or self.n_train_wrapped < 0 or self.n_train_obfuscated < 0:
            raise ValueError("n_train_suffixed, n_train_wrapped and n_train_obfuscated must be >= 0")

    @property
    def train_scale(self) -> float:
        """Factor applied to the training-set sizes (0.15 in quick mode)."""
        return 0.15 if self.quick else 1.0

    @property
    def n_wrapped(self) -> int:
        """Training prompts of each class wrapped in jailbreak templates, after :attr:`train_scale`."""
        return int(self.n_train_wrapped * self.train_scale)

    @property
    def n_obfuscated(self) -> int:
        """Training prompts of each class obfuscated, after :attr:`train_scale`."""
        return int(self.n_train_obfuscated * self.train_scale)

    @property
    def n_suffixed(self) -> int:
        """Training prompts of each class given random-token suffixes, after :attr:`train_scale`."""
        return int(self.n_train_suffixed * self.train_scale)
