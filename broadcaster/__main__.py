"""``python -m broadcaster``: the same as the ``broadcaster`` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
