"""Test-wide settings, read before any module compiles its loops.

numba does not check array bounds: an index past an array's end reads whatever memory lies
there, and a test may pass by luck. Under test the compiled loops check their bounds (an
IndexError instead), cached apart from the unchecked builds the product runs.
"""

import os
import tempfile

os.environ.setdefault("NUMBA_BOUNDSCHECK", "1")
os.environ.setdefault(
    "NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "nba-numba-boundscheck")
)
