"""Many files per run, in each tab: several uploads or a zip of images, one progress bar over the files.

Images go to the library's many-files runner (:func:`mm_core.batching.files.run_files`, the
CLI's batch with the app's engine), which writes every result in the CLI's layout and zips
them; time-lapses (one per file) are tracked one after the other by :func:`track_files`, each
into its own folder. The tab shows one summary table (image, count, mean area, warnings; a
refused file is one row saying why, the others go on), a gallery of the results to step
through and the zip.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from mm_core.app import display, panels
from mm_core.app import helpers as au
from mm_core.app.handlers import matcher, max_pixels, upload_roots
from mm_core.app.lifecycle import guarded
from mm_core.io.calibration import check_pixel_size
from mm_core.settings import get_settings

#: The runner's task by tab.
TASK = {"seg": "segment", "count": "count", "track": "track"}
#: Pictures in the gallery at most (the zip holds every result), and their longest side.
MAX_PICTURES, PICTURE_SIDE = 60, 512


def batch_panel(tab: str, pixel: gr.Textbox, types: list[str]) -> list:
    """The "many files" section of a tab, wired; returns its outputs ``[table, gallery, zip]``."""
    with gr.Accordion("Many files at once: several files or a zip of them, one table and one zip of results",
                      open=False, elem_id=f"{tab}-batch"):
        files = gr.File(label="Choose several files (or one zip of images); the pixel size above applies to all "
                        "(empty: each file's own)", file_count="multiple", file_types=[*types, ".zip"],
                        elem_id=f"{tab}-batch-files", height=120)
        run = gr.Button("Run on all files", variant="secondary", elem_id=f"{tab}-batch-run")
        table = gr.Dataframe(label="One row per file (a refused file says why; the others went on)",
                             interactive=False, visible=False, elem_id=f"{tab}-batch-table", wrap=True)
        gallery = gr.Gallery(label="Results: click one, then use the arrows to step through", visible=False,
                             columns=5, height=340, object_fit="contain", elem_id=f"{tab}-batch-gallery")
        zipped = gr.File(label="All results in one zip (the CLI's layout)", visible=False, interactive=False,
                         elem_id=f"{tab}-batch-zip")

    def handler(files, pixel, progress=gr.Progress()):
        return run_many(tab, files, pixel, progress=progress)

    outs = [table, gallery, zipped]
    run.click(guarded("running the files")(handler), [files, pixel], outs, api_name=f"{tab}_batch",
              concurrency_limit="default", concurrency_id="run")  # the runs' shared queue
    files.upload(lambda: (*panels.empty_results(3)[:2], gr.update(value=None, visible=False)), None, outs,
                 queue=False, show_progress="hidden", api_name=False)
    return outs


def _paths(files) -> list[str]:
    if not files:
        raise gr.Error("Choose one or more files (or a zip of images) first.", title="No files")
    roots = upload_roots()  # the app reads only files it received (issue 20)
    return [str(au.received_file(getattr(f, "name", f), roots))
            for f in (files if isinstance(files, (list, tuple)) else [files])]


def run_many(tab: str, files, pixel, progress=None):
    """Run the tab's task on every file; returns the summary table, gallery and zip (widget updates)."""
    paths = _paths(files)
    size = check_pixel_size(pixel, "the pixel size")
    out = au.new_request_dir() / "results"
    bar = None if progress is None else display.Estimate(progress)
    if tab == "track":
        table, zip_path, rows = track_files(paths, out, size, bar)
    else:
        from mm_core.batching.files import run_files

        done = run_files(paths, TASK[tab], out, matcher=matcher(), pixel_size=size, progress=bar)
        table, zip_path, rows = done.summary, done.zip_path, done.manifest
    pictures = gallery_pictures(rows, out, tab)
    shown = table.round(3).astype(object).where(table.notna(), "")  # a refused file: blanks, not "null"
    return (panels.shown(shown), gr.update(value=pictures or None, visible=bool(pictures)),
            gr.update(value=str(zip_path), visible=True))


def track_files(paths: list[str], out: Path, pixel_size, progress=None):
    """Track every time-lapse file into ``out`` (the CLI's files, one stem each); a refused file is
    one row with its message. Returns ``(summary table, zip, rows)``."""
    import shutil

    from mm_core import export
    from mm_core.errors import MMError
    from mm_core.io import read_sequence
    from mm_core.viz.plots import write_result_plots

    out.mkdir(parents=True, exist_ok=True)
    rows, n = [], len(paths)
    for i, path in enumerate(paths):
        name = Path(path).name
        row = {"image": name, "status": "failed", "tracks": np.nan, "divisions": np.nan, "warnings": "",
               "message": ""}
        try:
            seq = read_sequence(path, max_frames=get_settings().app_max_frames, max_pixels=max_pixels(), pixel_size=pixel_size)

            def tick(frac, desc="", i=i, name=name):
                if progress is not None:
                    progress((i + frac) / n, f"file {i + 1}/{n} {name}: {desc}")

            res = matcher().track(seq, progress=tick)
            stem = Path(path).stem  # a folder each: CTC frame names repeat from one sequence to the next
            export.save(res, out / stem, stem)
            write_result_plots(res, out / stem, stem)
            row.update(status="done", tracks=res.n_tracks, divisions=res.n_divisions, output=Path(path).stem,
                       warnings=" | ".join(res.warnings), pixel_size=res.pixel_size_note())
        except MMError as exc:
            row["message"] = str(exc)
        rows.append(row)
        if progress is not None:
            progress((i + 1) / n, f"{i + 1}/{n} files: {name}")
    table = pd.DataFrame(rows)
    table.to_csv(out / "summary.csv", index=False)
    zip_path = Path(shutil.make_archive(str(out.parent / "results"), "zip", out))
    return table, zip_path, table


def gallery_pictures(table: pd.DataFrame, out: Path, tab: str) -> list[tuple[str, str]]:
    """``(picture, caption)`` per finished file: objects coloured over the image (segmentation) or
    the density over it (counting), at most :data:`PICTURE_SIDE` a side, written into ``out``."""
    pics = []
    for _, row in table.head(MAX_PICTURES).iterrows():
        if str(row.get("status", "done")) != "done":
            continue
        picture = _picture(row, Path(out), tab)
        if picture is not None:
            value = row.get("objects", row.get("count", row.get("tracks", "")))
            pics.append((str(picture), f"{Path(str(row['image'])).name}: {value}"))
    return pics


def _input_picture(path: Path, k: int, shape: tuple[int, ...]) -> np.ndarray:
    """The input image subsampled by ``k`` for a gallery picture (mid grey when it cannot be read
    again, e.g. a file inside a zip)."""
    from mm_core import viz
    from mm_core.errors import MMError
    from mm_core.io import read_image

    try:
        if path.is_file() and path.suffix.lower() != ".zip" and path.stat().st_size < 200e6:
            pic = viz.display_image(read_image(path, max_pixels=max_pixels()).data[::k, ::k])
            if pic.shape[:2] == tuple(shape[:2]):
                return pic
    except (MMError, OSError, ValueError):
        pass
    return np.full(shape[:2], 0.5, np.float32)


def _picture(row, out: Path, tab: str) -> Path | None:
    import tifffile
    from PIL import Image

    from mm_core import viz

    base = str(row.get("output", Path(str(row["image"])).stem))
    name = {"seg": f"{base}.tif", "count": f"{base}_density.tif", "track": f"{base}/mask000.tif"}[tab]
    path = out / name
    if tab == "track" and not path.is_file():
        path = next(iter(sorted((out / base).glob("mask*.tif"))), path)
    if path is None or not path.is_file():
        return None
    arr = tifffile.imread(path)
    k = max(1, int(np.ceil(max(arr.shape[:2]) / PICTURE_SIDE)))
    arr = arr[::k, ::k]
    under = _input_picture(Path(str(row["image"])), k, arr.shape)
    if tab in ("seg", "track"):
        rgb = viz.overlay_labels(under, arr, opacity=0.5)
    else:
        rgb = viz.overlay_heatmap(au.muted(under), arr, opacity=0.8, gamma=0.5)
    dest = out.parent / "gallery" / f"{Path(base).name}.png"
    dest.parent.mkdir(exist_ok=True)
    Image.fromarray(viz.to_rgb8(rgb)).save(dest)
    return dest
