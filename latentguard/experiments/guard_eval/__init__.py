"""``latentguard guard eval``: the Latent Guard against other guards, in the style of the paper's Table 1.

Rows (each with a stable machine key, :mod:`.rows`): Latent Guard (``t_inst``), a refusal-direction
guard (the same method at ``t_post_inst``), the same guard on refused-vs-accepted labels, the model's
own refusal (the judge applied to its answer), the model asked to check itself (the reply-inversion
prompt), and a text classifier (MiniLM embeddings + logistic regression on the same training data).
Columns (:data:`.config.COLUMNS`): detection on plain harmful / everyday / XSTest-style prompts, on
jailbreaks that succeeded against the model, on the misbehaving groups, AUROC and TPR at 1% FPR, and
threshold-free XSTest columns.

Training data comes from ``../shared/data`` (every harmful set but HarmBench test; Alpaca train, half
of XSTest and the built-in XSTest-like lookalikes) or the built-in sets; everything evaluated is
unseen. The activation guards train on the set :mod:`latentguard.guard.training_set` builds, the
builder :func:`latentguard.guard.fit.fit_guard` uses. Both activation guards are also refitted with
``seeds`` different train/validation splits and the spread of every column is reported, because the
test sets are small (75 XSTest-style prompts: one prompt is 1.3 points).

Modules: :mod:`.rows` (row keys), :mod:`.config` (:class:`~.config.EvalConfig`, the columns),
:mod:`.data` (train and test sets), :mod:`.fits` (fitting the compared guards), :mod:`.scorers`
(scoring a guard into a row), :mod:`.stats` (paired tests), :mod:`.repair` (over-refusal repair),
:mod:`.format` (Markdown tables) and :mod:`.run` (:func:`~.run.evaluate_guards`, the driver). This
package file imports nothing, so reading :mod:`.rows` (as :mod:`latentguard.report.claims` does)
stays cheap.

Example:
    >>> from latentguard.experiments.guard_eval.config import EvalConfig
    >>> from latentguard.experiments.guard_eval.run import evaluate_guards
    >>> table = evaluate_guards(lm, judge, EvalConfig(quick=True))              # doctest: +SKIP
    >>> [row["key"] for row in table["rows"]][:2]                               # doctest: +SKIP
    ['latent_guard', 'refusal_direction_guard']
"""
