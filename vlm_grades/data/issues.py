"""Bad-data bookkeeping shared by every reader: skip-and-count by default, fail fast with strict.

A reader reports each bad record with `Issues.skip(kind, text, where)`: `text` goes into the one-line
summary ("1 missing image: /d/x.jpg (question 17)"), `where` (the file) prefixes the UserError that
strict mode raises on the first bad record. Image files are checked once, cheaply (header parse plus
an end-of-file marker check; a full decode only when the marker check is inconclusive).
"""
from __future__ import annotations

import io
import logging
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from vlm_grades.errors import UserError

log = logging.getLogger("vlm_grades.data")

_PLURAL = {"missing image": "missing images", "unreadable image": "unreadable images",
           "missing field": "records with missing fields", "no annotation": "questions without annotation",
           "bad record": "bad records", "missing answer": "questions without answer",
           "unanswered": "questions without answer"}


UNANSWERED_HINT = ("; a split without public answers (VQAv2 test-dev/test, GQA test): "
                   "`vlm-grades eval --allow-unanswered` predicts without a score")


class SampleList(list):
    """A list of Samples that also carries the load summary (`summary`, `skipped`)."""
    summary: str = ""
    skipped: int = 0


class Issues:
    def __init__(self, name: str, strict: bool = False):
        self.name = name                     # "vqav2 train": the summary's prefix
        self.strict = strict
        self.kinds: "OrderedDict[str, list]" = OrderedDict()   # kind -> [count, first text]

    @property
    def skipped(self) -> int:
        return sum(c for c, _ in self.kinds.values())

    def skip(self, kind: str, text: str, where: str | Path | None = None) -> None:
        if self.strict:
            raise UserError(f"{where}: {text}" if where else text)
        entry = self.kinds.setdefault(kind, [0, text])
        entry[0] += 1

    def summary(self, n_samples: int) -> str:
        line = f"{self.name}: {n_samples:,} samples"
        if not self.kinds:
            return line
        parts = []
        for kind, (count, text) in self.kinds.items():
            if count == 1:
                parts.append(f"1 {text}")
            else:
                parts.append(f"{count:,} {_PLURAL.get(kind, kind)}, first: {text}")
        return f"{line}, skipped {self.skipped:,} ({', '.join(parts)})"

    def finish(self, n_samples: int, source: str) -> str:
        """Log the one-line summary; an empty data set is an error."""
        line = self.summary(n_samples)
        if n_samples == 0:
            hint = UNANSWERED_HINT if "unanswered" in self.kinds else ""
            raise UserError(f"{source}: no usable samples ({line}){hint}")
        (log.warning if self.kinds else log.info)(line)
        return line


# ---------------------------------------------------------------- image checks

_JPEG_END = b"\xff\xd9"
_PNG_END = b"IEND\xaeB`\x82"


def _tail_ok(fmt: str | None, tail: bytes) -> bool | None:
    """True/False when the end-of-file marker tells whether the file is complete; None if unknown."""
    tail = tail.rstrip(b"\x00")  # some writers pad JPEGs with zeros
    if fmt == "JPEG":
        return tail.endswith(_JPEG_END) or None   # trailing junk after EOI is legal: fall back to decode
    if fmt == "PNG":
        return tail.endswith(_PNG_END) or None
    return None


def _check(open_arg, tail: bytes) -> str | None:
    try:
        with Image.open(open_arg) as im:
            fmt = im.format
            ok = _tail_ok(fmt, tail)
            if ok is None:
                im.load()        # unknown or inconclusive: decode once to be sure
    except Exception as e:  # PIL raises many types for bad files
        msg = str(e) or type(e).__name__
        return f"not a readable image ({msg})"
    return None


def check_image_file(path: str | Path) -> str | None:
    """None if `path` is a complete image file, else what is wrong ("image file not found", ...)."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError:
        return "image file not found"
    if not p.is_file():
        return "image path is not a file"
    if size == 0:
        return "not a readable image (empty file)"
    with open(p, "rb") as f:
        f.seek(max(0, size - 64))
        tail = f.read()
    return _check(p, tail)


def check_image_bytes(data: bytes) -> str | None:
    if not data:
        return "not a readable image (no bytes)"
    return _check(io.BytesIO(data), data[-64:])


class ImageChecker:
    """Checks each image once per load (many questions share one image)."""

    def __init__(self) -> None:
        self._seen: dict[str, str | None] = {}

    def __call__(self, image) -> str | None:
        if isinstance(image, (str, Path)):
            key = str(image)
            if key not in self._seen:
                self._seen[key] = check_image_file(image)
            return self._seen[key]
        if isinstance(image, (bytes, bytearray)):
            return check_image_bytes(bytes(image))
        return None  # an already decoded PIL image
