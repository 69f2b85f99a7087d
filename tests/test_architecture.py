"""The structure the code promises: layers, light imports, module size, docs that run."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

#: Modules whose public functions and classes form the documented API (numpydoc, checked by ruff).
PUBLIC_API = [
    "mm_core/__init__.py", "mm_core/models.py", "mm_core/pipelines.py", "mm_core/export/files.py",
    "mm_core/measure.py", "mm_core/io/__init__.py", "mm_core/io/reader.py", "mm_core/io/labels.py",
    "mm_core/io/archive.py", "mm_core/transforms/image.py", "mm_core/evaluation/metrics.py", "mm_core/viz/images.py",
    "mm_core/engines/__init__.py", "mm_core/engines/base.py", "mm_core/heads/registry.py",
    "mm_core/heads/segmentation.py", "mm_core/heads/counting.py", "mm_core/heads/tracking.py",
    "mm_core/transforms/tiles.py", "mm_core/errors.py", "mm_core/evaluation/score.py",
]
MAX_MODULE_LINES = 410


def test_import_layers_follow_the_data_flow():
    """import-linter contracts in pyproject.toml: no import from a lower layer to a higher one."""
    exe = shutil.which("lint-imports")
    assert exe, "import-linter is in requirements-dev.txt"
    proc = subprocess.run([exe, "--config", str(REPO / "pyproject.toml")], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_no_import_circle():
    import grimp

    graph = grimp.build_graph("mm_core", cache_dir=None)
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            assert not graph.chain_exists(imported, module), f"import circle: {module} <-> {imported}"


def test_import_mm_core_is_light():
    code = ("import sys, mm_core; bad = [m for m in ('gradio', 'diffusers', 'transformers') if m in sys.modules];"
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_modules_stay_small():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines())
             for p in [*(REPO / "mm_core").rglob("*.py"), REPO / "app.py"]}
    big = {k: v for k, v in sizes.items() if v > MAX_MODULE_LINES}
    assert not big, big


def test_public_api_has_numpydoc_docstrings():
    ruff = shutil.which("ruff")
    assert ruff, "ruff is in requirements-dev.txt"
    proc = subprocess.run([ruff, "check", "--select", "D", "--ignore", "D105,D107,D401", "--output-format",
                           "concise", *PUBLIC_API], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]


def _readme_python_example() -> str:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README has a Python example"
    return blocks[0]


def test_readme_python_example_runs(tmp_path, monkeypatch, torch_one_thread):
    """The README's Python example, executed as written (paths relative to the repository)."""
    code = _readme_python_example()
    for rel in ("examples/nuclei_fluorescence.tif", "examples/timelapse_division.tif"):
        code = code.replace(f'"{rel}"', repr(str(REPO / rel)))
    monkeypatch.chdir(tmp_path)
    env: dict = {}
    exec(compile(code, "README.md", "exec"), env)  # noqa: S102 - our own documentation
    assert env["seg"].n_objects > 0 and env["cnt"].count > 0 and env["trk"].n_tracks > 0
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"nuclei.tif", "nuclei.csv", "nuclei_rois.zip"}
    assert (tmp_path / "out" / "movie" / "res_track.txt").is_file()


def test_cli_and_app_write_the_same_files(tmp_path, monkeypatch, mm_env):
    """For the same input, ``python -m mm_core segment|count|track`` and the app's Run write the same files."""
    pytest.importorskip("gradio")
    import tifffile

    from mm_core.app import helpers as au
    from mm_core.app import ui
    from mm_core.cli import main

    examples = REPO / "examples"
    mm_env(MM_APP_OUTPUT_ROOT=tmp_path / "app", MM_ENGINE="classic")
    monkeypatch.setitem(ui.MATCHER, "matcher", None)
    cases = [("segment", "nuclei_fluorescence.tif", False, ui.run_segment),
             ("count", "crowded_cells.png", False, ui.run_count),
             ("track", "timelapse_division.tif", True, ui.run_track)]
    for task, name, sequence, handler in cases:
        cli_out = tmp_path / "cli" / task
        assert main([task, str(examples / name), "--out", str(cli_out), "--engine", "classic"]) == 0
        (tmp_path / "previews" / task).mkdir(parents=True)
        loaded = au.load_upload(examples / name, sequence, tmp_path / "previews" / task)
        args = (loaded, None, False) if sequence else (loaded, None, 0.5, False)
        outputs = handler(*args, progress=lambda *a, **k: None)
        app_dir = Path(next(o for o in outputs if isinstance(o, list))[0]).parent
        stem = Path(name).stem
        cli_files = {p.name for p in cli_out.iterdir() if p.name != "manifest.csv"}  # the batch's run record
        app_files = {p.name.replace(f"{stem}_", "", 1) if sequence else p.name for p in app_dir.iterdir()
                     if p.suffix not in (".gif", ".npy") and p.name != "preview.png"
                     and not p.name.startswith(".")}  # .npy: view caches; the app's folder marker
        assert cli_files == app_files, (task, cli_files ^ app_files)
        for f in cli_files:  # and the same contents
            if f.endswith(".tif"):
                np.testing.assert_array_equal(tifffile.imread(cli_out / f), tifffile.imread(
                    app_dir / (f if not sequence or f.startswith("mask") else f"{stem}_{f}")))
