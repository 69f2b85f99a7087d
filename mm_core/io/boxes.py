"""Reading exemplar boxes from a CSV file (the CLI's ``--boxes``).

The file is UTF-8 text, with or without a byte-order mark (Excel's "CSV UTF-8"),
with the header ``image,x0,y0,x1,y1`` (more columns are ignored, header names are
matched without surrounding spaces or case). Every problem is an
:class:`~mm_core.errors.InputError` naming the file and the line.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from mm_core.errors import InputError

#: Columns a boxes CSV must have.
BOX_COLUMNS = ("image", "x0", "y0", "x1", "y1")
#: Largest boxes CSV read (a few thousand images' boxes fit in far less).
MAX_CSV_BYTES = 16 * 1024 * 1024


class BoxTable(dict):
    """``{image: [[x0, y0, x1, y1], ...]}`` plus ``lines``: ``{image: [line numbers]}``."""

    def __init__(self):
        super().__init__()
        self.lines: dict[str, list[int]] = {}

    def add(self, image: str, box: list[float], line: int) -> None:
        """Add one row."""
        self.setdefault(image, []).append(box)
        self.lines.setdefault(image, []).append(line)

    def __missing__(self, key):  # like the defaultdict the CLI used: unknown image -> no boxes
        return []


def _text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{name}, line {line}: the file is not UTF-8 text (byte 0x{data[exc.start]:02x}); save it "
            "as 'CSV UTF-8' (Excel) or UTF-8 text with the header image,x0,y0,x1,y1"
        ) from None


def parse_boxes_csv(data: bytes, name: str = "the boxes CSV") -> BoxTable:
    """Parse the bytes of a boxes CSV.

    Parameters
    ----------
    data : bytes
        The file's content.
    name : str
        What to call the file in messages.

    Returns
    -------
    BoxTable
        Boxes per image name (as written in the ``image`` column, stripped).

    Raises
    ------
    InputError
        Not UTF-8, no ``image,x0,y0,x1,y1`` header, a NUL byte or a malformed
        row, or a coordinate that is not a finite number; the message names the line.
    """
    text = _text(data, name)
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise InputError(f"{name}, line {line}: holds a NUL byte; this is not a text CSV file")
    reader = csv.reader(io.StringIO(text, newline=""))
    boxes = BoxTable()
    try:
        header = next(reader, None)
        cols = {c.strip().lower(): i for i, c in enumerate(header or [])}
        if not set(BOX_COLUMNS) <= set(cols):
            found = ", ".join(c.strip() for c in header or []) or "nothing"
            raise InputError(f"{name}, line 1: the boxes CSV needs the header image,x0,y0,x1,y1 "
                             f"(found {found[:200]})")
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            try:
                box = [float(row[cols[k]]) for k in BOX_COLUMNS[1:]]
            except IndexError:
                raise InputError(f"{name}, line {line}: expected 5 values image,x0,y0,x1,y1, "
                                 f"found {len(row)}") from None
            except ValueError:
                raise InputError(f"{name}, line {line}: box coordinates x0,y0,x1,y1 must be numbers "
                                 "(pixels)") from None
            if not all(math.isfinite(v) for v in box):
                raise InputError(f"{name}, line {line}: box coordinates must be finite numbers")
            boxes.add(row[cols["image"]].strip(), box, line)
    except csv.Error as exc:
        raise InputError(f"{name}, line {reader.line_num}: not a valid CSV row ({exc})") from None
    return boxes


def read_boxes_csv(path) -> BoxTable:
    """Read a boxes CSV file (see :func:`parse_boxes_csv`); ``None``/empty path -> no boxes."""
    if not path:
        return BoxTable()
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_CSV_BYTES:
            raise InputError(f"{p.name} is {size / 1e6:.0f} MB; a boxes CSV is at most "
                             f"{MAX_CSV_BYTES // 2**20} MiB")
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the boxes CSV {p}: {exc.strerror or exc}") from None
    return parse_boxes_csv(data, p.name)
