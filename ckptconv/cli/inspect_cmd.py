"""``ckptconv inspect SRC [--json] [--all]``: list a checkpoint's tensors (metadata only)."""

from __future__ import annotations

import argparse
import math

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
            "stored tensor (tied weights) are listed each, then reported together. --json "
            "gives the same totals under \"totals\": tensors, values, nbytes, by_dtype, and "
            "not_shown / skipped_values (the entries and values the listing leaves out)."
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
            doc["totals"] = {
                **tally(entries), "not_shown": len(store) - len(entries), "skipped_values": len(store.skipped)
            }
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
    from ..dtypes import dtype_name

    header = ("name", "shape", "dtype", "size") + (("kind",) if all_kinds else ())
    # column by column; shapes, dtype names and sizes repeat across many tensors, so each
    # distinct one is written once
    shape_texts: dict[tuple[int, ...], str] = {}
    dtype_names: dict[object, str] = {}
    size_texts: dict[int, str] = {}
    shapes, dtypes, sizes = [], [], []
    for e in entries:
        shape, dtype = e.shape, e.dtype
        nbytes = math.prod(shape) * dtype.itemsize
        text = shape_texts.get(shape)
        if text is None:
            text = shape_texts[shape] = "[" + ", ".join(map(str, shape)) + "]"
        shapes.append(text)
        text = dtype_names.get(dtype)
        if text is None:
            text = dtype_names[dtype] = dtype_name(dtype)
        dtypes.append(text)
        text = size_texts.get(nbytes)
        if text is None:
            text = size_texts[nbytes] = human_bytes(nbytes)
        sizes.append(text)
    columns = [[e.name for e in entries], shapes, dtypes, sizes]
    if all_kinds:
        columns.append([e.kind for e in entries])
    widths = [max(len(title), max(map(len, column), default=0)) for title, column in zip(header, columns)]
    # the size column right-aligned, the others left-aligned
    row = "  ".join(f"{{:{'>' if i == 3 else '<'}{w}}}" for i, w in enumerate(widths)).format
    lines = [f"{path} ({fmt})", row(*header).rstrip(), "  ".join("-" * w for w in widths)]
    lines += [row(*cells).rstrip() for cells in zip(*columns)]
    totals = tally(entries)
    lines.append(f"{totals['tensors']} tensors, {totals['values']:,} values, {human_bytes(totals['nbytes'])}")
    return "\n".join(lines)


def tally(entries: list[Entry]) -> dict[str, object]:
    """What the listing's foot totals, as ``inspect --json`` prints it: ``tensors``, ``values``
    (elements) and ``nbytes`` over ``entries`` (tied names each count, as each is listed), and
    the same three per dtype name under ``by_dtype``, in the order the dtypes first appear."""
    from ..dtypes import dtype_name

    per_dtype: dict[object, list[int]] = {}  # dtype -> [tensors, values]
    last = counts = None
    for e in entries:
        dtype = e.dtype
        if dtype is not last:  # runs of one dtype: hash a dtype once per run, not per tensor
            counts = per_dtype.setdefault(dtype, [0, 0])
            last = dtype
        counts[0] += 1  # type: ignore[index]
        counts[1] += math.prod(e.shape)  # type: ignore[index]
    by_dtype = {
        dtype_name(dtype): {"tensors": tensors, "values": values, "nbytes": values * dtype.itemsize}  # type: ignore[attr-defined]
        for dtype, (tensors, values) in per_dtype.items()
    }
    return {
        "tensors": len(entries),
        "values": sum(d["values"] for d in by_dtype.values()),
        "nbytes": sum(d["nbytes"] for d in by_dtype.values()),
        "by_dtype": by_dtype,
    }
