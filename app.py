"""MicroscopyMatching web app: the entry point (``python app.py``; Hugging Face Spaces runs this file).

Everything lives in :mod:`mm_core.app`: the layout and handlers in
:mod:`mm_core.app.ui`, over one :class:`mm_core.Matcher`. Options:
``python app.py --host 0.0.0.0 --port 7860`` (``GRADIO_SERVER_NAME`` /
``GRADIO_SERVER_PORT``, as Spaces sets them, work too).
"""

from mm_core.app.ui import build_app, main

__all__ = ["build_app", "main"]

if __name__ == "__main__":
    main()
