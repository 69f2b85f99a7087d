"""Command-line interface: ``python -m mm_core {segment,count,track,evaluate}``.

A thin shell over :mod:`mm_core.pipelines`, :mod:`mm_core.io`, :mod:`mm_core.export`
and :mod:`mm_core.evaluation`. In a batch, a file that cannot be used is reported by
name and skipped; the exit code is then non-zero (1). Bad arguments exit with 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from mm_core.engines import ENGINE_NAMES
from mm_core.errors import InputError, MMError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Image files given directly, plus the image files inside given folders (natural order)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = [f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                     and not f.name.startswith(".")]
            out.extend(sorted(files, key=lambda f: _natural_key(f.name)))
        else:
            out.append(p)
    return out


def read_boxes_csv(path: str | None) -> dict[str, list[list[float]]]:
    """Read a boxes CSV with header ``image,x0,y0,x1,y1`` into ``{image: [[x0, y0, x1, y1], ...]}``."""
    boxes: dict[str, list[list[float]]] = defaultdict(list)
    if not path:
        return boxes
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            need = {"image", "x0", "y0", "x1", "y1"}
            if reader.fieldnames is None or not need <= set(reader.fieldnames):
                raise InputError(f"{Path(path).name}: the boxes CSV needs the header image,x0,y0,x1,y1 "
                                 f"(found {', '.join(reader.fieldnames or []) or 'nothing'})")
            for i, row in enumerate(reader, start=2):
                try:
                    box = [float(row[k]) for k in ("x0", "y0", "x1", "y1")]
                except (TypeError, ValueError):
                    raise InputError(f"{Path(path).name}, line {i}: box coordinates must be numbers") from None
                boxes[(row["image"] or "").strip()].append(box)
    except OSError as exc:
        raise InputError(f"cannot read the boxes CSV {path}: {exc.strerror}") from None
    return boxes


def _boxes_for(name: str, cli_boxes: list | None, csv_boxes: dict, aliases: tuple[str, ...] = ()) -> list | None:
    found = list(cli_boxes or [])
    for key in dict.fromkeys((name, Path(name).stem, *aliases)):
        found.extend(csv_boxes.get(key, []))
    return found or None


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
        raise InputError(f"cannot create the output folder {out}: {exc.strerror}") from None
    return out


def _engine(name: str):
    from mm_core.engines import get_engine

    engine, reason = get_engine(name)
    print(f"engine: {reason}", file=sys.stderr)
    return engine


def _run_batch(args, task: str) -> int:
    from mm_core import export, pipelines
    from mm_core.io import read_image

    out = _out_dir(args.out)
    files = expand_inputs(args.inputs)
    if not files:
        raise InputError("no input images found (give image files or folders holding .tif/.png/.jpg/.bmp files)")
    csv_boxes = read_boxes_csv(args.boxes)
    engine = _engine(args.engine)
    from mm_core.heads.learned import select_head

    _, head_note = select_head(args.head, task, engine.name, "exemplar" if (args.box or csv_boxes) else "automatic")
    print(f"head: {head_note}", file=sys.stderr)
    failures, seen, counts = 0, set(), []
    for path in tqdm(files, desc=task, unit="image", file=sys.stderr):
        try:
            img = read_image(path, channels=args.channels).data
            boxes = _boxes_for(path.name, args.box, csv_boxes)
            base = _unique_base(path, seen)
            if task == "segment":
                res = pipelines.segment(img, boxes=boxes, engine=engine, head=args.head)
                export.write_labels(out / f"{base}.tif", res.labels)
                export.write_measurements(out / f"{base}.csv", res.labels, img)
                tqdm.write(f"{path.name}: {res.n_objects} objects ({res.maps.mode} mode)", file=sys.stderr)
            else:
                res = pipelines.count(img, boxes=boxes, engine=engine, head=args.head)
                export.write_density(out / f"{base}_density.tif", res.density)
                export.write_points(out / f"{base}_points.csv", res.points)
                counts.append((base, res.count))
                tqdm.write(f"{path.name}: count {res.count:.1f} ({res.maps.mode} mode)", file=sys.stderr)
        except MMError as exc:
            failures += 1
            tqdm.write(f"skipped {path.name}: {exc}", file=sys.stderr)
    if task == "count":
        export.write_counts(out / "counts.csv", counts)
    print(f"{len(files) - failures} of {len(files)} images done; results in {out}", file=sys.stderr)
    return 1 if failures else 0


def _run_track(args) -> int:
    from mm_core import export, pipelines
    from mm_core.io import read_sequence

    out = _out_dir(args.out)
    seq = read_sequence(args.inputs[0], channels=args.channels)
    first = Path(seq.names[0]).name if seq.names else "first"
    boxes = _boxes_for(first, args.box, read_boxes_csv(args.boxes), aliases=("first",))
    engine = _engine(args.engine)
    bar = tqdm(total=100, desc="track", unit="%", file=sys.stderr,
               bar_format="{l_bar}{bar}| {postfix} [{elapsed}<{remaining}]")

    def progress(frac: float, desc: str) -> None:
        bar.n = min(100, int(round(100 * frac)))
        bar.set_postfix_str(desc)  # e.g. "frame 12/65"

    res = pipelines.track(seq.frames, boxes=boxes, engine=engine, progress=progress, head=args.head)
    bar.close()
    print(f"head: {res.head_note}", file=sys.stderr)
    export.write_ctc(out, res.masks, res.tracks)
    export.write_tracks_csv(out / "tracks.csv", res.masks, res.tracks)
    print(f"{res.n_tracks} tracks, {res.n_divisions} divisions over {len(seq.frames)} frames; "
          f"CTC results in {out}", file=sys.stderr)
    return 0


def _run_evaluate(args) -> int:
    from mm_core.evaluation import evaluate

    print(json.dumps(evaluate(args.pred, args.gt, task=args.task)))
    return 0


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
        p.add_argument("--channels", type=int, nargs="+", default=None,
                       help="channels to use (0-based) for multi-channel images; default: RGB stays RGB, "
                       "other multi-channel images become a composite")

    def with_head(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--head", default="auto", help="learned head: a checkpoint folder, a registered name, "
                       "hub:owner/name, 'analytic', or 'auto' (a shipped learned head for this engine if any)")
        return p

    common(with_head(sub.add_parser("segment", help="instance segmentation: <base>.tif labels + <base>.csv measurements")), "segment")
    common(with_head(sub.add_parser("count", help="counting: counts.csv, <base>_density.tif, <base>_points.csv")),
           "count")
    common(with_head(sub.add_parser("track", help="tracking: CTC maskTTT.tif + res_track.txt, tracks.csv")), "track")
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
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
