"""A guard server process over the fake backend of ``test_serve`` (for the kill -9 test).

python tests/serve_fake.py --port 8123 --audit-db sqlite:///audit.db [--delay 0.02]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_serve import FakeBackend  # noqa: E402

from latentguard.guard.serve import ServeConfig, run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--audit-db", required=True)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds per backend batch")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = ServeConfig(port=args.port, audit_db=args.audit_db, batch_max_wait_ms=5)
    run(FakeBackend(delay_s=args.delay), config)


if __name__ == "__main__":
    main()
