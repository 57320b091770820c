#!/usr/bin/env python
"""Entry point: `python cli.py run scenarios/analog.yaml` (see `python cli.py --help`)."""

import sys

from swap_hw.cli import main

if __name__ == "__main__":
    sys.exit(main())
