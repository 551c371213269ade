"""The test suite (tests/conftest.py describes its lanes and fixtures)."""

import os
import sys

# Cache compiled modules, and pytest's assert-rewritten test modules, even where the shell
# sets PYTHONDONTWRITEBYTECODE: without the cache every xdist worker rewrote all 120 test
# modules again (~4.5 s of a core each), and every `telephony serve` a test starts compiled
# the package afresh. `__pycache__/` is git-ignored.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
