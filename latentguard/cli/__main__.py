"""``python -m latentguard``-style entry: ``python -m latentguard.cli``."""

from latentguard.cli.main import main

raise SystemExit(main())
