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
            print(f"({hidden} optimizer/bookkeeping {'entry' if hidden == 1 else 'entries'} not shown; use --all)")
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
    # a model has a few distinct shapes, dtypes and kinds: the cells after the name are
    # written and padded once per group of equal ones, and a row is its padded name and
    # its group's cells
    groups, of_entry = _groups(entries, by_kind=all_kinds)
    cells = []
    for group in groups:
        shape, dtype = group.first.shape, group.first.dtype
        texts = ["[" + ", ".join(map(str, shape)) + "]", dtype_name(dtype),
                 human_bytes(math.prod(shape) * dtype.itemsize)]
        if all_kinds:
            texts.append(group.first.kind)
        cells.append(texts)
    names = [e.name for e in entries]
    widths = [max(len(header[0]), max(map(len, names), default=0))]
    widths += [max(len(title), max((len(texts[i]) for texts in cells), default=0))
               for i, title in enumerate(header[1:])]
    # the size column right-aligned, the others left-aligned
    row = "  ".join(f"{{:{'>' if i == 3 else '<'}{w}}}" for i, w in enumerate(widths)).format
    name_width = widths[0]
    for group, texts in zip(groups, cells):
        # a row ends in its group's cells (never blank: a shape is at least "[]"), so only
        # they lose the trailing blanks
        group.tail = row("", *texts)[name_width:].rstrip()
    lines = [f"{path} ({fmt})", row(*header).rstrip(), "  ".join("-" * w for w in widths)]
    lines += [name.ljust(name_width) + group.tail for name, group in zip(names, of_entry)]
    totals = _tally(groups, len(entries))
    lines.append(f"{totals['tensors']} tensors, {totals['values']:,} values, {human_bytes(totals['nbytes'])}")
    return "\n".join(lines)


class _Group:
    """Entries of one shape and dtype (and kind, where the listing shows it): the ``first``
    of them, how many (``count``), and their row's cells after the name (``tail``)."""

    __slots__ = ("first", "count", "tail")

    def __init__(self, first: Entry) -> None:
        self.first = first
        self.count = 0
        self.tail = ""


def _groups(entries: list[Entry], *, by_kind: bool) -> tuple[list[_Group], list[_Group]]:
    """The groups of equal shape and dtype (and kind with ``by_kind``) in order of first
    appearance, and each entry's group. A dtype is told by its identity (readers share one
    object per dtype); equal dtypes that are distinct objects only make more groups."""
    found: dict[tuple[object, ...], _Group] = {}
    of_entry = []
    for e in entries:
        key = (e.shape, id(e.dtype), e.kind) if by_kind else (e.shape, id(e.dtype))
        group = found.get(key)
        if group is None:
            group = found[key] = _Group(e)
        group.count += 1
        of_entry.append(group)
    return list(found.values()), of_entry


def tally(entries: list[Entry]) -> dict[str, object]:
    """What the listing's foot totals, as ``inspect --json`` prints it: ``tensors``, ``values``
    (elements) and ``nbytes`` over ``entries`` (tied names each count, as each is listed), and
    the same three per dtype name under ``by_dtype``, in the order the dtypes first appear."""
    return _tally(_groups(entries, by_kind=False)[0], len(entries))


def _tally(groups: list[_Group], tensors: int) -> dict[str, object]:
    """:func:`tally` of the entries in ``groups`` (``tensors`` of them)."""
    from ..dtypes import dtype_name

    per_dtype: dict[object, list[int]] = {}  # dtype -> [tensors, values]
    for group in groups:
        counts = per_dtype.setdefault(group.first.dtype, [0, 0])
        counts[0] += group.count
        counts[1] += math.prod(group.first.shape) * group.count
    by_dtype = {
        dtype_name(dtype): {"tensors": count, "values": values, "nbytes": values * dtype.itemsize}  # type: ignore[attr-defined]
        for dtype, (count, values) in per_dtype.items()
    }
    return {
        "tensors": tensors,
        "values": sum(d["values"] for d in by_dtype.values()),
        "nbytes": sum(d["nbytes"] for d in by_dtype.values()),
        "by_dtype": by_dtype,
    }
