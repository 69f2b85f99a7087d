"""``python -m mm_core``: the command-line interface (see :mod:`mm_core.cli`)."""

from mm_core.cli import main

raise SystemExit(main())
