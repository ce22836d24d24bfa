"""``ckptconv inspect SRC [--json] [--all]``: list a checkpoint's tensors (metadata only)."""

from __future__ import annotations

import argparse
TYPE_CHECKING = False

from .common import add_debug, add_json, emit_json, exit_status, human_bytes

if TYPE_CHECKING:
    from ..store import Entry

EXIT_STATUS = {
    0: "listed",
    1: "the checkpoint cannot be read (missing, of no known format, damaged, hostile)",
    2: "a usage error (unknown option, missing argument)",
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "inspect",
        help="list the tensors of a checkpoint (reads metadata only)",
        description=(
            "List the tensors of a checkpoint: name, shape, dtype and size, with totals. "
            "Reads metadata only (checks that every file the checkpoint names exists). "
            "Only weights are listed unless --all asks for the training state too (and the "
            "values a PyTorch checkpoint holds that are not tensors). Names that are one "
            "stored tensor (tied weights) are listed each, then reported together."
        ),
        epilog=exit_status(EXIT_STATUS),
    )
    p.add_argument("src", metavar="SRC", help="checkpoint file, directory or TF prefix")
    add_json(p, "the listing (instead of a table)")
    p.add_argument(
        "--all", action="store_true",
        help="include optimizer and bookkeeping entries (the training state) and list the "
        "values that are not tensors",
    )
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..formats import open as open_store

    with open_store(args.src) as store:
        entries = store.entries(include_all=args.all)
        shown = {e.name for e in entries}
        tied = [group for group in store.tied if sum(name in shown for name in group) > 1]
        if args.json:
            doc: dict[str, object] = {
                "ok": True,
                "format": store.format,
                "path": store.path,
                "metadata": store.metadata,
                "tensors": [e.describe() for e in entries],
            }
            if tied:
                doc["tied"] = [[name for name in group if name in shown] for group in tied]
            if args.all and store.skipped:
                doc["skipped"] = [{"name": name, "value": what} for name, what in store.skipped]
            emit_json(args, doc)
            return 0
        print(format_table(store.format, store.path, entries, all_kinds=args.all))
        for group in tied:
            print("tied (one stored tensor): " + " = ".join(name for name in group if name in shown))
        hidden = len(store) - len(entries)
        if hidden:
            print(f"({hidden} optimizer/bookkeeping entries not shown; use --all)")
        if args.all and store.skipped:
            print(f"skipped {len(store.skipped)} values that are not tensors:")
            for name, what in store.skipped:
                print(f"  {name}: {what}")
        elif store.skipped:
            print(f"({len(store.skipped)} values that are not tensors skipped; --all lists them)")
    return 0


def format_table(fmt: str, path: str, entries: list[Entry], *, all_kinds: bool = False) -> str:
    """The human-readable listing: one row per tensor, then totals."""
    rows = [("name", "shape", "dtype", "size") + (("kind",) if all_kinds else ())]
    for e in entries:
        row = (e.name, "[" + ", ".join(map(str, e.shape)) + "]", e.dtype_name, human_bytes(e.nbytes))
        rows.append(row + ((e.kind,) if all_kinds else ()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"{path} ({fmt})"]
    for i, row in enumerate(rows):
        cells = [c.ljust(w) if j != 3 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    total = sum(e.nbytes for e in entries)
    params = sum(int(e.nbytes // max(e.dtype.itemsize, 1)) for e in entries)
    lines.append(f"{len(entries)} tensors, {params:,} values, {human_bytes(total)}")
    return "\n".join(lines)
