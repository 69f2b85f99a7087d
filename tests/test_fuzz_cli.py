"""Issue 20: a bounded fuzz test (hypothesis) of the readers through the CLI.

Mutated TIFF, PNG and zip files (flipped bytes, cut short, odd names) given to
``segment`` and ``track``: the CLI ends with a valid result (exit 0) or a refusal naming
the file (exit 1), never a traceback, and writes nothing outside ``--out``.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mm_core.cli import main

BUDGET = settings(max_examples=6, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _frame(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((48, 48), 100, np.uint16)
    img[10:20, 10:20] = img[28:38, 26:36] = 1000
    return (img + rng.integers(0, 20, img.shape)).astype(np.uint16)


def _seeds() -> dict[str, bytes]:
    tif, png, zbuf = io.BytesIO(), io.BytesIO(), io.BytesIO()
    tifffile.imwrite(tif, _frame(0), compression="zlib")
    Image.fromarray((_frame(1) // 8).astype(np.uint8)).save(png, format="PNG")
    with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_DEFLATED) as zf:
        for t in range(3):
            b = io.BytesIO()
            tifffile.imwrite(b, _frame(t))
            zf.writestr(f"t{t}.tif", b.getvalue())
    return {".tif": tif.getvalue(), ".png": png.getvalue(), ".zip": zbuf.getvalue()}


SEEDS = _seeds()
NAMES = st.sampled_from(["cells", "a b", "ünï", "x" * 120, "-dash", "..dots"])


@st.composite
def mutated(draw):
    ext = draw(st.sampled_from(sorted(SEEDS)))
    raw = bytearray(SEEDS[ext])
    for _ in range(draw(st.integers(0, 4))):
        raw[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(raw))))
    return draw(NAMES) + ext, bytes(raw if cut is None else raw[:cut])


def _tree(root: Path) -> dict[str, tuple]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if "out" not in p.relative_to(root).parts[:1]}


@BUDGET
@given(mutated())
def test_the_cli_gives_a_result_or_a_message_never_a_traceback(case):
    import contextlib

    name, raw = case
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / name
        src.write_bytes(raw)
        before = _tree(root)
        command = "track" if name.endswith(".zip") else "segment"
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main([command, str(src), "--out", str(root / "out"), "--engine", "classic", "--head", "analytic"])
        text = err.getvalue()
        assert code in (0, 1) and "Traceback" not in text
        if code == 1:
            assert name in text or name[:40] in text
        assert _tree(root) == before  # nothing written beside --out
        assert not [p for p in (root / "out").rglob("*.partial")]  # no scratch left behind
        assert os.listdir(root / "out") or code == 1
