#!/usr/bin/env python3
"""Shim: see orchestrator/spawn.py."""

import sys
from pathlib import Path

if sys.version_info < (3, 11):
    sys.exit(f"{Path(__file__).name}: error: Python 3.11 or newer is needed (this is {sys.version.split()[0]})")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.spawn import main

if __name__ == "__main__":
    sys.exit(main())
