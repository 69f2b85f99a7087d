"""Command-line interface: ``python -m mm_core {segment,count,track,evaluate}``.

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
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from mm_core.engines import ENGINE_NAMES
from mm_core.errors import InputError, MMError
from mm_core.io import expand_inputs
from mm_core.io.boxes import read_boxes_csv


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


@contextmanager
def _warnings_about(where: str):
    """Print every :class:`~mm_core.errors.InputWarning` raised in the block, naming ``where``."""
    from mm_core.errors import InputWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)
        yield
    for w in caught:
        if issubclass(w.category, InputWarning):
            _warn(where, str(w.message))
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


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


def _unique_base(path: Path, seen: set[str]) -> str:
    base, k = path.stem, 2
    while base in seen:
        base, k = f"{path.stem}_{k}", k + 1
    seen.add(base)
    return base


def _out_dir(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _UsageError(f"cannot create the output folder {out}: {exc.strerror}") from None
    return out


def _matcher(args, task: str):
    from mm_core.models import Matcher

    # segment/count: the checkpoint must be for that task; track: a segmentation checkpoint serves the
    # per-frame segmentation and a linking checkpoint the linking
    head = args.head if task == "track" else {task: args.head}
    matcher = Matcher(engine=args.engine, head=head)
    print(f"engine: {matcher.engine_note}", file=sys.stderr)
    if task == "track":
        print(f"heads: {matcher.track_heads()[2]}", file=sys.stderr)
    else:
        print(f"head: {matcher.head_notes()[task]}", file=sys.stderr)
    return matcher


def _print_warnings(name: str, warnings: list[str]) -> None:
    """One line per warning of a result (see :mod:`mm_core.checks`), as every CLI warning: ``warning: <file>: ...``."""
    for w in warnings:
        _warn(name, w)


def _run_batch(args, task: str) -> int:
    from mm_core.batching.run import batch

    files = _inputs(args.inputs)
    if not files:
        raise _UsageError("no input images found (give image files or folders holding "
                          ".tif/.png/.jpg/.bmp files)")
    csv_boxes, used = _read_boxes(args.boxes), set()
    boxes = {str(p): b for p in files if (b := _boxes_for(p.name, args.box, csv_boxes, used=used))}
    _unused_rows(args.boxes, csv_boxes, used)
    where = (f"Dask scheduler {args.scheduler}" if args.scheduler
             else f"{args.workers} local Dask workers" if args.workers > 1 else "this process")
    print(f"{task}: {len(files)} images on {where}; engine {args.engine}, head {args.head}", file=sys.stderr)
    table = batch(files, task=task, out=_out_dir(args.out), workers=args.workers, scheduler=args.scheduler,
                  resume=args.resume, engine=args.engine, head=args.head, boxes=boxes,
                  channels=args.channels, tile=args.tile, overlap=args.overlap, pixel_size=args.pixel_size)
    failures = int((table["status"] != "done").sum())
    print(f"{len(files) - failures} of {len(files)} images done; results and manifest.csv in {args.out}",
          file=sys.stderr)
    return EXIT_REFUSED if failures else EXIT_OK


def _run_track(args) -> int:
    from mm_core import export
    from mm_core.io import read_sequence

    out = _out_dir(args.out)
    csv_boxes, used = _read_boxes(args.boxes), set()
    name = Path(args.inputs[0]).name
    try:
        with _warnings_about(name):
            seq = read_sequence(args.inputs[0], channels=args.channels, pixel_size=args.pixel_size)
    except InputError as exc:
        print(f"error: {_naming(name, exc)}", file=sys.stderr)
        return EXIT_REFUSED
    first = Path(seq.names[0]).name if seq.names else "first"
    boxes = _boxes_for(first, args.box, csv_boxes, aliases=("first",), used=used)
    _unused_rows(args.boxes, csv_boxes, used)
    matcher = _matcher(args, "track")
    bar = tqdm(total=100, desc="track", unit="%", file=sys.stderr,
               bar_format="{l_bar}{bar}| {postfix} [{elapsed}<{remaining}]")

    def progress(frac: float, desc: str) -> None:
        bar.n = min(100, int(round(100 * frac)))
        bar.set_postfix_str(desc)  # e.g. "frame 12/65"

    try:
        with _warnings_about(name):
            res = matcher.track(seq, boxes=boxes, progress=progress)
    except InputError as exc:
        bar.close()
        print(f"error: {_naming(name, exc)}", file=sys.stderr)
        return EXIT_REFUSED
    bar.close()
    export.save(res, out)
    from mm_core.viz.plots import write_result_plots

    write_result_plots(res, out)
    print(f"{res.n_tracks} tracks, {res.n_divisions} divisions over {len(seq.frames)} frames; "
          f"CTC results and GEFF tracks.zarr in {out}. {res.pixel_size_note()}", file=sys.stderr)
    _print_warnings(name, res.warnings)
    return EXIT_OK


def _run_evaluate(args) -> int:
    from mm_core.evaluation import evaluate

    try:
        print(json.dumps(evaluate(args.pred, args.gt, task=args.task)))
    except InputError as exc:
        print(f"error: {_naming(Path(args.pred).name, exc)}", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK


def _batch_arguments(p: argparse.ArgumentParser) -> None:
    """Options of many-image runs (:func:`mm_core.batch`)."""
    from mm_core.batching.tiled import DEFAULT_TILE

    p.add_argument("--workers", type=int, default=1, help="worker processes of a local Dask cluster "
                   "(default 1: run in this process)")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None, help="send the images to an existing Dask "
                   "scheduler, e.g. tcp://10.0.0.5:8786 (its workers must see the input and output folders)")
    p.add_argument("--resume", action="store_true", help="skip images whose outputs in --out are complete "
                   "(as recorded in manifest.csv)")
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
        p.add_argument("inputs", nargs="+" if what != "track" else 1, metavar="INPUT" if what != "track" else "SEQ",
                       help="image files or folders" if what != "track"
                       else "folder of frames, multi-page/OME TIFF or zip of frames")
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
        p.add_argument("--head", default="auto", help="learned head: a checkpoint folder, a registered name, "
                       "hub:owner/name, 'analytic', or 'auto' (a shipped learned head for this engine if any)")
        return p

    seg = with_head(sub.add_parser("segment", help="instance segmentation: <base>.tif labels, <base>.csv "
                                   "measurements, <base>_rois.zip ImageJ ROIs"))
    cnt = with_head(sub.add_parser("count", help="counting: counts.csv, <base>_density.tif, <base>_points.csv"))
    for p, what in ((seg, "segment"), (cnt, "count")):
        common(p, what)
        _batch_arguments(p)
    common(with_head(sub.add_parser("track", help="tracking: CTC maskTTT.tif + res_track.txt, ctc.zip, "
                                    "tracks.csv, tracks.zarr + tracks_geff.zip (GEFF)")), "track")
    ev = sub.add_parser("evaluate", help="score predictions against ground truth; prints one JSON line")
    ev.add_argument("pred", help="predictions folder (as written by segment/count/track)")
    ev.add_argument("gt", help="ground-truth folder in the layout of ../shared/data")
    ev.add_argument("--task", choices=("seg", "count", "track"), default=None, help="default: from the layout")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("segment", "count"):
            return _run_batch(args, args.command)
        if args.command == "track":
            return _run_track(args)
        return _run_evaluate(args)
    except MMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
