"""Aligned text tables, as ``plan`` and ``diff`` print them (a module of its own: ``diff``
imports none of the plan report's classes)."""

from __future__ import annotations


def table_lines(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Rows under a header as aligned text lines, two spaces between columns (the tables of
    ``plan`` and ``diff``)."""
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    # the last column is left ragged: no trailing padding
    def fmt(row: tuple[str, ...]) -> str:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        return "  ".join([*cells, row[-1]]).rstrip()

    return [fmt(header), *(fmt(r) for r in rows)]
