"""Plain-text tables for the commands' human-readable output."""

from __future__ import annotations


def format_table(headers: list[str], rows: list[list], align_right: set[int] | None = None
                 ) -> str:
    """Columns padded to their widest cell; numbers (by default every column after the
    first) are right-aligned so digits line up."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    right = align_right if align_right is not None else set(range(1, len(headers)))
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i in right else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def number(value: float | None, digits: int = 4) -> str:
    """A readable number: integers with thousands separators, floats to `digits`
    significant figures, None as "-"."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}"
