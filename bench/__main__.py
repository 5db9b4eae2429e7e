"""``python -m bench``: the ``ambient bench`` command (see :mod:`bench.cli`).

Going through the ``ambient`` root gives the same error handling as every other
command: a user-facing error prints as ``error:`` + ``hint:``, never a traceback.
"""

from __future__ import annotations

import sys

from ambient.cli import main

main(["bench", *sys.argv[1:]])
