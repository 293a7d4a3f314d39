"""Regenerate the shipped default corpus (`default/*.txt` + ATTRIBUTION.md) from WikiText-2.

    python -m qtf_edge.data.make_default_corpus SRC_DIR [--out DIR]

SRC_DIR holds WikiText-2's `train.txt` and `valid.txt` (the "v1" tokenised form). Each
excerpt is the longest run of whole articles from the start of its file that fits a byte
budget; lines are copied verbatim (blank lines included), so an excerpt is exactly lines
1..N of its source and anyone can check it with `head -n N`. The source files are checked
against known sha256 sums first, which makes the output byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from qtf_edge.atomic import write_bytes_atomic, write_text_atomic
from qtf_edge.data.errors import DataError

DEFAULT_OUT = Path(__file__).resolve().parent / "default"

# Byte budgets: big enough to train a toy model and a tokenizer, small enough to ship.
BUDGETS = {"train": 600_000, "valid": 120_000}

# The WikiText-2 files this excerpt was cut from (see ../shared/data/README.md).
SOURCE_SHA256 = {
    "train": "95d391461f8b518e0dbe99ddf539b93799909340b89425b45c35483d3389f122",
    "valid": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
}

# An article starts with a level-1 heading " = Title = "; sections are " = = Title = = ".
_ARTICLE_HEADING = re.compile(rb"^ = [^=].* = $")


@dataclass(frozen=True)
class Excerpt:
    """Lines 1..`lines` of a source file: `data` holds them, each with its "\\n"."""

    split: str
    data: bytes
    lines: int
    articles: int
    source_lines: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def cut_excerpt(split: str, source: bytes, budget: int) -> Excerpt:
    """Return the longest prefix of `source` that ends just before an article and fits `budget`."""
    lines = source.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the file's final newline ends the last line; it does not start a new one
    starts = [i for i, line in enumerate(lines) if _ARTICLE_HEADING.match(line)]
    # An excerpt may stop just before any later article's heading, or at the end of the file.
    ends = starts[1:] + [len(lines)]
    end, articles, size = 0, 0, 0
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)
    for count, stop in enumerate(ends, start=1):
        if offsets[stop] > budget:
            break
        end, articles, size = stop, count, offsets[stop]
    if articles == 0:
        raise DataError(f"{split}.txt: no whole article fits in {budget} bytes: expected "
                        "WikiText articles starting with ' = Title = ' lines")
    return Excerpt(split, source[:size], end, articles, len(lines))


def read_source(src_dir: Path, split: str) -> bytes:
    """Read WikiText-2 `split`.txt and check it is the exact file the excerpt was made from."""
    path = src_dir / f"{split}.txt"
    if not path.is_file():
        raise DataError(f"source {path} does not exist: expected WikiText-2 {split}.txt")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SOURCE_SHA256[split]:
        raise DataError(f"source {path} has sha256 {digest}: expected {SOURCE_SHA256[split]}")
    return data


def attribution(excerpts: list[Excerpt]) -> str:
    """The ATTRIBUTION.md text: source, licence, what was taken and how to remake it."""
    rows = "\n".join(
        f"| {e.split}.txt | WikiText-2 {e.split}.txt | 1–{e.lines} of {e.source_lines} "
        f"| {e.articles} | {len(e.data):,} | `{e.sha256}` |"
        for e in excerpts
    )
    return f"""# Default corpus: an excerpt of WikiText-2

These files are an excerpt of **WikiText-2** (the tokenised "v1" form: words separated by
spaces, rare words replaced by `<unk>`, one paragraph per line), from

> Stephen Merity, Caiming Xiong, James Bradbury, Richard Socher. *Pointer Sentinel Mixture
> Models.* 2016. arXiv:1609.07843.

WikiText is built from Wikipedia "Good" and "Featured" articles and is licensed under the
**Creative Commons Attribution-ShareAlike 3.0** licence
(<https://creativecommons.org/licenses/by-sa/3.0/>). The excerpt is shared under the same
licence. Wikipedia's text is by its contributors; see each article's history on Wikipedia.

## What was taken

Each file is the first whole articles of the WikiText-2 split that fit a byte budget
(train {BUDGETS['train']:,} B, valid {BUDGETS['valid']:,} B), copied verbatim: lines
1..N of the source, blank lines included. Nothing else was changed.

| file | source | source lines | articles | bytes | sha256 |
| --- | --- | --- | --- | --- | --- |
{rows}

Source sha256: train.txt `{SOURCE_SHA256['train']}`, valid.txt
`{SOURCE_SHA256['valid']}` (valid.txt is the standard validation split; train.txt is a
re-packaging of the standard train split with the articles in another order).

## How to remake it

```
python -m qtf_edge.data.make_default_corpus ../shared/data/wikitext-2
```

The command checks the sources' sha256 first and writes identical files every time.
"""


def make_default_corpus(src_dir: Path, out_dir: Path = DEFAULT_OUT) -> list[Excerpt]:
    """Cut both excerpts from `src_dir` and write them, with ATTRIBUTION.md, into `out_dir`."""
    excerpts = [cut_excerpt(split, read_source(src_dir, split), budget)
                for split, budget in BUDGETS.items()]
    for excerpt in excerpts:
        write_bytes_atomic(out_dir / f"{excerpt.split}.txt", excerpt.data)
    write_text_atomic(out_dir / "ATTRIBUTION.md", attribution(excerpts))
    return excerpts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qtf_edge.data.make_default_corpus",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("src_dir", type=Path, help="folder with WikiText-2 train.txt and valid.txt")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    try:
        excerpts = make_default_corpus(args.src_dir, args.out)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for e in excerpts:
        print(f"{e.split}.txt: lines 1-{e.lines}, {e.articles} articles, {len(e.data):,} bytes, "
              f"sha256 {e.sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
