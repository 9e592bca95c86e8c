"""Experiments built on the product package: each reads a model with :mod:`latentguard.guard`,
:mod:`latentguard.analysis` and :mod:`latentguard.judge`, and writes a result file.

* :mod:`latentguard.experiments.guard_eval` -- ``latentguard guard eval``: the Latent Guard against
  other guards, in the style of the paper's Table 1 (``guard_eval.json``).

Nothing in :mod:`latentguard.guard` imports from here.
"""
