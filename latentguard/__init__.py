"""latentguard: separate what a chat LLM believes is harmful from what it refuses, and guard with the belief.

Modules, in the order data flows (each imports only from those above it):

* :mod:`latentguard.models` -- load a model (HF id, path, ``.gguf``, ``default``, ``organism``)
* :mod:`latentguard.positions` -- ``t_inst`` / ``t_post_inst`` from the chat template
* :mod:`latentguard.data` -- built-in sets and loaders
* :mod:`latentguard.encoder` -- the MiniLM sentence encoder (find, load, encode)
* :mod:`latentguard.activations` -- cached, resumable hidden-state extraction
* :mod:`latentguard.directions` -- diff-in-means directions and cosines
* :mod:`latentguard.generation`, :mod:`latentguard.judge`, :mod:`latentguard.steering`
* :mod:`latentguard.behaviour`, :mod:`latentguard.organism`
* :mod:`latentguard.attacks` -- jailbreak prompts (templates, persuasion) and GCG suffixes
* :mod:`latentguard.analysis` -- beliefs, sweeps, the study; :mod:`latentguard.report`
* :mod:`latentguard.guard` -- Latent Guard: fit, check, guarded generation, serve
* :mod:`latentguard.experiments` -- experiments on the guard: ``guard eval`` (the paper's Table 1)
"""

__version__ = "0.1.0"
