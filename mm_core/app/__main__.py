"""``python -m mm_core.app``: start the web app (same as ``python app.py``)."""

from mm_core.app.ui import main

main()
