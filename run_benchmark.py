#!/usr/bin/env python
"""Entry point: `python run_benchmark.py --techniques all` (see --help)."""

import sys

from harness.cli import main

if __name__ == "__main__":
    sys.exit(main())
