"""Plain-text corpora: one document or paragraph per line, as in WikiText.

A corpus is a UTF-8 text file, or a folder of `*.txt` files read in sorted name order.
Lines that are empty or whitespace-only are dropped: WikiText uses them only as spacing
between paragraphs and headings, and a model gains nothing from learning them. Every other
line is kept byte for byte (WikiText's leading space included), so that tokenising and
decoding reproduce the text exactly.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from qtf_edge.data.errors import DataError

_DEFAULT_DIR = Path(__file__).resolve().parent / "default"
SPLITS = ("train", "valid")


def read_corpus(path: str | os.PathLike) -> list[str]:
    """Return the non-blank lines of a text file, or of a folder's `*.txt` files in name order.

    Raises DataError (naming the path) when the path is missing, a file is not valid UTF-8
    (with the byte offset of the first bad byte), or no non-blank line remains.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"corpus folder {path} has no *.txt files: expected text, "
                            "one paragraph per line")
    elif path.is_file():
        files = [path]
    elif path.exists():
        raise DataError(f"corpus {path} is neither a file nor a folder: expected a text file "
                        "or a folder of *.txt files")
    else:
        raise DataError(f"corpus {path} does not exist: expected a text file or a folder of "
                        "*.txt files")

    lines = [line for file in files for line in _read_lines(file) if line.strip()]
    if not lines:
        raise DataError(f"corpus {path} is empty: expected text, one paragraph per line")
    return lines


def _read_lines(file: Path) -> list[str]:
    """Decode one file strictly as UTF-8 and split it into lines (any newline convention)."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise DataError(f"corpus file {file} cannot be read ({exc.strerror}): expected a "
                        "readable text file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Strict decoding: silently replacing bad bytes would train on mojibake.
        line_number = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"corpus file {file} is not valid UTF-8 at byte offset {exc.start} "
                        f"(line {line_number}): expected UTF-8 text") from None
    text = text.removeprefix("\ufeff")  # a byte-order mark is an encoding detail, not text
    # Only "\n", "\r\n" and "\r" end a line; str.splitlines would also split on characters
    # such as U+2028 or U+001C that can legitimately occur inside a paragraph.
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def corpus_sha256(lines: list[str]) -> str:
    """Return a stable hex sha256 of the corpus lines.

    It equals `sha256sum` of a file holding the lines, each followed by "\\n", so it can be
    checked by hand. A line holding a newline would make that ambiguous, hence DataError.
    """
    digest = hashlib.sha256()
    for number, line in enumerate(lines, start=1):
        if "\n" in line or "\r" in line:
            raise DataError(f"corpus line {number} contains a line break: expected one "
                            "paragraph per line")
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def default_corpus(split: str = "train") -> Path:
    """Return the path of the shipped WikiText-2 excerpt for `split` ("train" or "valid").

    The excerpt is small (well under 1 MB) so that it travels with the package and tests
    run everywhere; see `default/ATTRIBUTION.md` for its source and licence (CC BY-SA 3.0).
    """
    if split not in SPLITS:
        raise DataError(f"split {split!r} is unknown: expected one of {', '.join(SPLITS)}")
    path = _DEFAULT_DIR / f"{split}.txt"
    if not path.is_file():
        raise DataError(f"default corpus {path} is missing: reinstall qtf-edge")
    return path
