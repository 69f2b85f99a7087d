"""``python -m mm_core.train``: see :mod:`mm_core.train.cli`."""

from mm_core.train.cli import main

raise SystemExit(main())
