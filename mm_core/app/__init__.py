"""The web app (Gradio): layout and handlers in :mod:`.ui`, Gradio-free helpers in :mod:`.helpers`.

Start it with ``python app.py`` (the entry point Hugging Face Spaces runs) or
``python -m mm_core.app``. Importing :mod:`mm_core` never imports this package or Gradio.
"""
