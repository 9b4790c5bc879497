"""`python -m bench`: run the benchmark and write its results."""

from __future__ import annotations

import sys

from bench.cli import main

sys.exit(main())
