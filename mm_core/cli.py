"""Command-line interface: ``python -m mm_core {segment,count,track,evaluate,settings,check-heads}``.

A thin shell over one :class:`mm_core.Matcher`, :mod:`mm_core.io`, :func:`mm_core.export.save`
and :mod:`mm_core.evaluation`; it writes the same files as the app. One exit-code rule
for every command:

- ``0``: every input was done;
- ``1``: some input was refused (reported by file name, the others are still done);
- ``2``: a usage error (bad arguments or options, a bad ``--boxes`` CSV, no input,
  an output folder that cannot be made, an engine or head that cannot be had).

Warnings (swapped box corners, a box over the whole image, ``--boxes`` rows that name
no input image) are printed as ``warning: <file>: ...`` and do not change the code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from mm_core.engines import ENGINE_NAMES
from mm_core.errors import InputError, MMError, printable
from mm_core.io import expand_inputs
from mm_core.io.boxes import read_boxes_csv
from mm_core.io.reader import first_frame_name


def _inputs(items: list[str]) -> list[Path]:
    """Image files and folders (see :func:`mm_core.io.expand_inputs`), zarr / OME-Zarr folders as they are."""
    from mm_core.io.lazy import is_zarr

    out: list[Path] = []
    for item in items:
        out.extend([Path(item)] if is_zarr(item) else expand_inputs([item]))
    return out


#: Exit codes (see the module docstring).
EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


class _UsageError(MMError):
    """A problem with the command line itself (exit code 2)."""


class _WriteError(_UsageError):
    """The output folder cannot take the results (read-only, full): exit code 2."""


def _boxes_for(name: str, cli_boxes: list | None, csv_boxes: dict, aliases: tuple[str, ...] = (),
               used: set | None = None) -> list | None:
    found = list(cli_boxes or [])
    for key in dict.fromkeys((name, Path(name).stem, *aliases)):
        if key in csv_boxes and used is not None:
            used.add(key)
        found.extend(csv_boxes.get(key, []))
    return found or None


def _warn(where: str, message: str) -> None:
    tqdm.write(f"warning: {where}: {message}", file=sys.stderr)


def _unused_rows(csv_path: str | None, csv_boxes, used: set) -> None:
    """Warn about ``--boxes`` rows whose image matches no input."""
    for key, lines in getattr(csv_boxes, "lines", {}).items():
        if key not in used:
            where = f"{Path(csv_path).name}, line{'s' * (len(lines) > 1)} {', '.join(map(str, lines[:5]))}"
            _warn(where, f"image {key!r} matches no input image; {len(lines)} box"
                  f"{'es were' if len(lines) > 1 else ' was'} not used")


def _read_boxes(path: str | None):
    try:
        return read_boxes_csv(path)
    except InputError as exc:
        raise _UsageError(f"--boxes: {exc}") from None


def _naming(name: str, exc: Exception) -> str:
    """The message of ``exc``, prefixed with ``name`` when it does not name it already."""
    msg = str(exc)
    return msg if name in msg else f"{name}: {msg}"


def _pixel_size(text: str) -> float:
    """``--pixel-size``: a positive number of µm, else argparse's one-line usage error."""
    from mm_core.io.calibration import check_pixel_size

    try:
        return check_pixel_size(text, "--pixel-size")
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _out_dir(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _UsageError(f"cannot create the output folder {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise _UsageError(f"the output folder {out} is not writable (read-only); choose another --out")
    return out


def _track_boxes(seq: Path, cli_boxes: list | None, csv_boxes: dict, used: set) -> list | None:
    """Exemplar boxes on a time-lapse's first frame: ``--box``, and ``--boxes`` rows naming the
    first frame, the time-lapse or ``first``."""
    first = first_frame_name(seq) or "first"
    return _boxes_for(first, cli_boxes, csv_boxes, aliases=("first", seq.name, seq.stem), used=used)


def _run_batch(args, task: str) -> int:
    """segment, count or track: one :func:`mm_core.batch` (one task per image or time-lapse)."""
    from mm_core.batching.run import batch
    from mm_core.batching.tasks import WRITE_FAILED

    files = [Path(p) for p in args.inputs] if task == "track" else _inputs(args.inputs)
    if not files:
        raise _UsageError("no input images found (give image files or folders holding "
                          ".tif/.png/.jpg/.bmp files)")
    csv_boxes, used = _read_boxes(args.boxes), set()
    boxes = {str(p): b for p in files if (b := _track_boxes(p, args.box, csv_boxes, used) if task == "track"
                                         else _boxes_for(p.name, args.box, csv_boxes, used=used))}
    _unused_rows(args.boxes, csv_boxes, used)
    what = "time-lapses" if task == "track" else "images"
    where = (f"Dask scheduler {args.scheduler}" if args.scheduler
             else f"{args.workers} local Dask workers" if args.workers > 1 else "this process")
    print(f"{task}: {len(files)} {what} on {where}; engine {args.engine}, head {args.head}", file=sys.stderr)
    tiles = {} if task == "track" else {"tile": args.tile, "overlap": args.overlap}
    table = batch(files, task=task, out=_out_dir(args.out), workers=args.workers, scheduler=args.scheduler,
                  resume=args.resume, engine=args.engine, head=args.head, boxes=boxes,
                  channels=args.channels, pixel_size=args.pixel_size, **tiles)
    failures = int((table["status"] != "done").sum())
    print(f"{len(files) - failures} of {len(files)} {what} done; results and manifest.csv in {args.out}",
          file=sys.stderr)
    if table["message"].astype(str).str.startswith(WRITE_FAILED).any():
        print(f"error: {args.out} refused a write (full or read-only); the inputs it concerns are "
              "marked failed in manifest.csv, with no partial result", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_REFUSED if failures else EXIT_OK


def _run_evaluate(args) -> int:
    from mm_core.evaluation import evaluate

    try:
        task = "segment" if args.task == "seg" else args.task
        print(json.dumps(evaluate(args.pred, args.gt, task=task)))
    except InputError as exc:
        print(f"error: {_naming(Path(args.pred).name, exc)}", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK


def _run_settings(args) -> int:
    """Print the ``MM_*`` settings: their values now, or the README's table (``--markdown``)."""
    from dataclasses import fields

    from mm_core.settings import Settings, get_settings, settings_table

    if args.markdown:
        print(settings_table())
        return EXIT_OK
    now = get_settings()
    for f in fields(Settings):
        print(f"{Settings.env(f.name)}={getattr(now, f.name)}")
    return EXIT_OK


def _batch_arguments(p: argparse.ArgumentParser, tiles: bool = True) -> None:
    """Options of many-input runs (:func:`mm_core.batch`); ``tiles``: the tiling options too."""
    from mm_core.batching.tiled import DEFAULT_TILE

    p.add_argument("--workers", type=int, default=1, help="worker processes of a local Dask cluster "
                   "(default 1: run in this process)")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None, help="send the inputs to an existing Dask "
                   "scheduler, e.g. tcp://10.0.0.5:8786 (its workers must see the input and output folders)")
    p.add_argument("--resume", action="store_true", help="skip inputs whose outputs in --out are complete "
                   "(as recorded in manifest.csv)")
    if not tiles:
        return
    p.add_argument("--tile", type=int, default=DEFAULT_TILE, help="images larger than this many pixels on a "
                   f"side are processed in overlapping tiles (default {DEFAULT_TILE})")
    p.add_argument("--overlap", type=int, default=None, help="tile overlap in pixels (default: 3 object "
                   "diameters, at least 128)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to document the CLI)."""
    parser = argparse.ArgumentParser(prog="python -m mm_core", description=(
        "MicroscopyMatching: segmentation, counting and tracking by matching within the image. "
        "Without --box/--boxes the automatic mode finds the repeated objects by itself."))
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("inputs", nargs="+", metavar="INPUT" if what != "track" else "SEQ",
                       help="image files or folders" if what != "track"
                       else "time-lapses, each a folder of frames, a multi-page/OME TIFF or a zip of frames "
                       "(several: each one's files go into a subfolder of --out named after it)")
        p.add_argument("--out", required=True, help="output folder (created if needed; nothing is written elsewhere)")
        p.add_argument("--engine", choices=ENGINE_NAMES, default="auto",
                       help="auto: the LDM engine when a GPU and its weights are available, else classic")
        p.add_argument("--box", nargs=4, type=float, action="append", metavar=("X0", "Y0", "X1", "Y1"),
                       help="exemplar box in pixels (x = column, x1/y1 exclusive); repeat for several")
        p.add_argument("--boxes", metavar="CSV", help="CSV with header image,x0,y0,x1,y1 "
                       "(image = file name without extension" + ("; 'first' = first frame)" if what == "track" else ")"))
        p.add_argument("--pixel-size", metavar="UM", default=None, type=_pixel_size,
                       help="pixel size in micrometres (µm per pixel), overriding the file's calibration; "
                       "measurements are then in µm and µm² as well as pixels (default: read from the file "
                       "(OME-TIFF, ImageJ TIFF, TIFF resolution, OME-Zarr), else pixels only)")
        p.add_argument("--channels", type=int, nargs="+", default=None,
                       help="channels to use (0-based) for multi-channel images; default: RGB stays RGB, "
                       "other multi-channel images become a composite")

    def with_head(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--head", default="auto", help="learned head: a checkpoint folder, a shipped name, "
                       "hub:owner/name, 'analytic', or 'auto' (a shipped learned head for this engine if any)")
        return p

    seg = with_head(sub.add_parser("segment", help="instance segmentation: <base>.tif labels, <base>.csv "
                                   "measurements, <base>_rois.zip ImageJ ROIs"))
    cnt = with_head(sub.add_parser("count", help="counting: counts.csv, <base>_density.tif, <base>_points.csv"))
    for p, what in ((seg, "segment"), (cnt, "count")):
        common(p, what)
        _batch_arguments(p)
    trk = with_head(sub.add_parser("track", help="tracking: CTC maskTTT.tif + res_track.txt, ctc.zip, "
                                   "tracks.csv, tracks.zarr + tracks_geff.zip (GEFF)"))
    common(trk, "track")
    _batch_arguments(trk, tiles=False)
    ev = sub.add_parser("evaluate", help="score predictions against ground truth; prints one JSON line")
    ev.add_argument("pred", help="predictions folder (as written by segment/count/track)")
    ev.add_argument("gt", help="ground-truth folder in the layout of ../shared/data")
    ev.add_argument("--task", choices=("segment", "seg", "count", "track"), default=None,
                    help="default: from the layout ('seg' is short for 'segment')")
    st = sub.add_parser("settings", help="the MM_* environment variables and their values now")
    st.add_argument("--markdown", action="store_true", help="print the README's settings table instead")
    sub.add_parser("check-heads", help="load the authors' released head checkpoints in FOLDER strictly; "
                   "one line per file, non-zero exit on any mismatch").add_argument("folder", metavar="FOLDER")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("segment", "count", "track"):
            return _run_batch(args, args.command)
        if args.command == "settings":
            return _run_settings(args)
        if args.command == "check-heads":
            from mm_core.heads.authors.check import main as check_heads

            return check_heads(args.folder)
        return _run_evaluate(args)
    except MMError as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # the output folder refused a write (read-only, full disk, ...)
        where = f" {printable(exc.filename)}" if exc.filename else ""
        print(f"error: cannot write{where}: {exc.strerror or exc}; check that --out is writable and has "
              "space (files already written there are complete; manifest.csv says which)", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
