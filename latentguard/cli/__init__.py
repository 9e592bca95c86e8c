"""``latentguard`` command line: thin commands over the Python API, one module per command group.

* :mod:`latentguard.cli.model_cmds` -- positions, extract, directions, generate, judge, label
* :mod:`latentguard.cli.study_cmds` -- align, attack, run
* :mod:`latentguard.cli.guard_cmds` -- guard fit / check / chat / eval, serve
* :mod:`latentguard.cli.common` -- shared options, and options generated from config dataclasses

Each command parses its arguments, calls one API function, and prints JSON or a short table.
"""

from latentguard.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
