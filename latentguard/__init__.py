"""latentguard: separate what a chat LLM believes is harmful from what it refuses, and guard with the belief.

Layers, top to bottom; a module imports only from layers below it (``lint-imports`` checks the
contract in ``pyproject.toml``; ``docs/architecture.md`` draws it):

* :mod:`latentguard.cli` -- the ``latentguard`` command
* :mod:`latentguard.report` -- figures, claims and ``report.html`` from ``summary.json``
* :mod:`latentguard.experiments` -- the ``guard eval`` experiment
* :mod:`latentguard.analysis` (beliefs, sweeps, the study) | :mod:`latentguard.ray_engine`
* :mod:`latentguard.guard` -- Latent Guard: types, model, training set, fit, score, guarded, serve
* :mod:`latentguard.organism` | :mod:`latentguard.behaviour` | :mod:`latentguard.attacks` |
  :mod:`latentguard.steering` | :mod:`latentguard.directions`
* :mod:`latentguard.lora` -- LoRA training and float16 adapters
* :mod:`latentguard.generation` -- greedy batched generation
* :mod:`latentguard.activations` (cached hidden states) | :mod:`latentguard.judge` (refusal judges)
* :mod:`latentguard.prefix` | :mod:`latentguard.hooks` | :mod:`latentguard.encoder`
* :mod:`latentguard.positions` -- ``t_inst`` / ``t_post_inst`` from the chat template
* :mod:`latentguard.models` | :mod:`latentguard.hardware` | :mod:`latentguard.batching`
* :mod:`latentguard.io` (atomic writes, cache root) | :mod:`latentguard.data` (data sets)
"""

__version__ = "0.1.0"
