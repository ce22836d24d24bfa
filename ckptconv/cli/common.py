"""Helpers the subcommands share: the parser class, option spellings, JSON output, sizes,
progress bars, the conversion options."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)

if TYPE_CHECKING:
    from typing import Any

# A Python argument (``"dtype"``) or argument=value (``"strict=False"``) -> how this command
# line spells it, for the option markers in error messages (ckptconv.errors.render_options).
SPELLING: dict[str, str] = {
    "force=True": "--force",
    "strict=False": "--non-strict",
    "check_crc=False": "--no-check-crc",
    "fsync=False": "--no-fsync",
    "checksum=False": "--no-checksum",
    "include_all=True": "--all",
    "cast=True": "--cast",
    "unsafe=True": "--unsafe",
    "by_order=True": "--by-order",
    "allow_lossy=True": "--allow-lossy",
    "any_suffix=True": "--any-suffix",
    "verify=True": "--verify",
    "dtype": "--dtype",
    "mapping": "--map",
    "max_shard_size": "--max-shard-size",
    "metadata": "--metadata",
    "only": "--only",
    "target": "--target",
    "workers": "--jobs",
    "pattern": "--name-pattern",
}


class UsageExit(Exception):
    """argparse refused the command line (raised instead of exiting, so that ``main`` can
    also answer ``--json`` with a JSON object)."""

    def __init__(self, line: str, message: str) -> None:
        super().__init__(line)
        self.line = line
        self.message = message


class Parser(argparse.ArgumentParser):
    """ckptconv's parsers: no abbreviated options (``--onl`` is not ``--only``), a
    subcommand reports its own unknown arguments with its own usage line, and an unknown
    option or choice gets the nearest known one (``did you mean --json?``, by
    :func:`ckptconv.errors.did_you_mean`, the rule of every suggestion ckptconv makes)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.suggest_on_error = False  # (Python 3.14's own guesses: ckptconv makes its own)

    def _get_formatter(self) -> argparse.HelpFormatter:
        # argparse asks shutil for the width, and importing shutil (with bz2 and lzma) is
        # a tenth of `ckptconv --help`'s own time; the same width, found the same way
        return self.formatter_class(prog=self.prog, width=_terminal_columns() - 2)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def, override]
        parsed, extras = super().parse_known_args(args, namespace)
        if self.prog != "ckptconv":  # a subcommand: say it with its usage
            if extras:
                self.unrecognized(extras)
            parsed.command_parser = self  # for the usage errors found once parsed
        return parsed, extras

    def parse_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def, override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:  # the top-level parser's (a subcommand's own are reported above)
            self.unrecognized(extras)
        return parsed

    def unrecognized(self, extras: list[str]) -> None:
        """argparse's "unrecognized arguments" error, with the option nearest the first
        unknown one."""
        from ..errors import did_you_mean

        guess = ""
        option = next((e.partition("=")[0] for e in extras if e.startswith("-") and e != "-"), None)
        if option is not None:
            known = [o for o in self._option_string_actions if o.startswith("--") == option.startswith("--")]
            guess = did_you_mean(option, known, quote=False, cutoff=0.6)
        self.error(f"unrecognized arguments: {' '.join(extras)}" + (f"; {guess}" if guess else ""))

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        """argparse's check of a value against an argument's choices (the subcommand's name),
        with the nearest choice added to its message: ``invalid choice: 'inspct' (choose
        from ...); did you mean 'inspect'?``. The value and the choices are seen here as they
        are, whatever words this Python's argparse puts around them."""
        try:
            super()._check_value(action, value)  # type: ignore[misc]
        except argparse.ArgumentError as e:
            from ..errors import did_you_mean

            choices = action.choices if action.choices is not None else ()
            guess = did_you_mean(value, [str(c) for c in choices]) if isinstance(value, str) else ""
            if not guess or "did you mean" in e.message:
                raise
            raise argparse.ArgumentError(action, f"{e.message}; {guess}") from None

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise UsageExit(f"{self.prog}: error: {message}", message)


def usage_exit(args: argparse.Namespace, message: str) -> UsageExit:
    """A usage error found once the command line is parsed (a value the API refuses, batch's
    inputs): its line has argparse's prefix, the command's (``ckptconv convert: error:
    MESSAGE``), so every usage error reads the same; the value is named in the message, so
    no usage line comes before it (argparse prints one for a command line it cannot parse)."""
    prog = getattr(getattr(args, "command_parser", None), "prog", "ckptconv")
    return UsageExit(f"{prog}: error: {message}", message)


def _terminal_columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size().columns`` gives it: ``$COLUMNS``,
    else the width of the terminal on stdout, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def exit_status(codes: dict[int, str]) -> str:
    """The ``Exit status:`` paragraph of a command's ``--help`` (and of docs/cli.md), from
    the command module's ``EXIT_STATUS``; 130/143 (Ctrl-C, SIGTERM) are the same everywhere."""
    parts = [f"{code} {text}" for code, text in sorted(codes.items())]
    return "Exit status: " + "; ".join(parts) + "; 130/143 interrupted (Ctrl-C, SIGTERM), nothing left behind."


def cli_type(parse: Callable[[str], Any], *, keep_text: bool = False) -> Callable[[str], Any]:
    """An argparse ``type`` from one of the API's value checks: its ``ValueError`` becomes
    argparse's usage error (exit status 2, naming the option). ``keep_text``: check only,
    and pass the text on as given (the API parses it again, the same way)."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text if keep_text else value

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def lazy(module: str, name: str) -> Callable[..., Any]:
    """``module.name`` (a value check), imported when first called: parsers are built for
    ``--help`` and usage errors, which must not import numpy or h5py for one."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = name
    return call


def add_json(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--json", action="store_true",
        help=f"print {what} as one JSON object on stdout (also when the command fails: "
        '{"ok": false, "error": {...}})',
    )


def emit_json(args: argparse.Namespace | None, doc: dict[str, Any]) -> None:
    """Print the command's one JSON object on stdout (and remember that it was printed)."""
    import json

    json.dump(doc, sys.stdout, indent=1)
    sys.stdout.write("\n")
    sys.stdout.flush()
    if args is not None:
        args.json_emitted = True


def spelled_for_debug(error: BaseException) -> None:
    """Before ``--debug`` lets an error through to Python's traceback: each ckptconv error
    in its chain names options as this command line spells them (``--no-check-crc``, not
    ``check_crc=False``), as the one-line message would have."""
    from ..errors import CkptconvError

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, CkptconvError):
            current.spelling = SPELLING
        current = current.__cause__ or current.__context__


def print_error(message: str, *, write: Callable[[str], Any] | None = None) -> None:
    """One ``ckptconv: error: MESSAGE`` line on stderr, the message made one line whatever a
    library put in it (scripts and batch jobs parse stderr). ``write`` prints the line
    instead (a progress bar's ``write``, which clears the bar first)."""
    line = f"ckptconv: error: {' '.join(message.split())}"
    if write is not None:
        write(line)
    else:
        print(line, file=sys.stderr, flush=True)


def error_json(error: BaseException, message: str, status: int) -> dict[str, Any]:
    """The ``{"ok": false, "error": {...}}`` object for a failed command."""
    detail: dict[str, Any] = {"type": type(error).__name__, "message": message, "exit": status}
    for field in ("path", "tensor"):
        value = getattr(error, field, None)
        if value is not None:
            detail[field] = value
    problems = getattr(error, "problems", None)
    if problems:
        detail["problems"] = list(problems)
    return {"ok": False, "error": detail}


def human_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def want_progress(quiet: bool, forced: bool = False) -> bool:
    """Progress bars go to stderr, only on a terminal (or when asked), never with --quiet."""
    if quiet:
        return False
    return forced or sys.stderr.isatty()


def add_debug(parser) -> None:  # type: ignore[no-untyped-def]
    """Accept ``--debug`` after the subcommand too (``ckptconv convert a b --debug``)."""
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the full traceback when the command fails",
    )


def add_convert_options(parser, *, many: bool = False) -> None:  # type: ignore[no-untyped-def]
    """The conversion options ``convert`` and ``batch`` share (``many``: worded for batch).

    Every value is checked by the API's own check as its argparse type, so a bad one is a
    usage error (exit status 2) before anything is read."""
    check_metadata = lazy("ckptconv.formats.safetensors", "check_metadata")
    parse_output_dtype = lazy("ckptconv.mapping.spec", "parse_output_dtype")
    parse_size = lazy("ckptconv.writers.safetensors", "parse_size")

    outputs = "outputs" if many else "the output"
    parser.add_argument(
        "--map", metavar="SPEC",
        help="mapping spec file (YAML, JSON or TOML)" + (", applied to every input" if many else ""),
    )
    parser.add_argument(
        "--dtype", metavar="DT", type=cli_type(parse_output_dtype, keep_text=True),
        help="output dtype for floating-point weights (float32, float16, bfloat16, ...; keep: "
        "each weight's own)",
    )
    parser.add_argument(
        "--allow-lossy", action="store_true",
        help="let --dtype be a lossy cast (float weights to int8, bool, ...); refused otherwise",
    )
    parser.add_argument(
        "--max-shard-size", metavar="SIZE", type=cli_type(parse_size),
        help="write Hugging Face sharded sets, at most SIZE per shard (5GB = 5*10^9 bytes, 2GiB = 2*2^30)",
    )
    parser.add_argument("--all", action="store_true", help="also write optimizer and bookkeeping entries")
    parser.add_argument(
        "--force", action="store_true",
        help=f"replace existing {outputs}" if many else "replace an existing output (a sharded set crash-safely; "
        "only files ckptconv wrote are ever removed)",
    )
    parser.add_argument(
        "--any-suffix", action="store_true",
        help="write safetensors under a name that does not end in .safetensors (refused otherwise)",
    )
    parser.add_argument("--no-fsync", action="store_true", help=f"do not flush {outputs} to disk before finishing")
    parser.add_argument("--no-checksum", action="store_true", help="do not record per-tensor CRC-32C checksums")
    parser.add_argument(
        "--no-check-crc", action="store_true",
        help="skip the sources' own checksums (TF checkpoints' per-tensor CRC-32C, the zip CRC-32 of a .keras "
        "weights member and of a torch.save file's storages): damaged data is written as read, and "
        'the output records ckptconv.source_checksums: "not checked"',
    )
    parser.add_argument(
        "--verify", action="store_true",
        help=f"read {outputs} back before putting them in place and check every tensor's CRC-32C "
        "(a failure leaves no output)",
    )

    def metadata_item(text: str) -> tuple[str, str]:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE (e.g. format=pt), got {text!r}")
        check_metadata({key: value})  # the one rule for __metadata__ entries
        return key, value

    parser.add_argument(
        "--metadata", metavar="KEY=VALUE", action="append", type=cli_type(metadata_item),
        help="add or replace a __metadata__ entry, e.g. format=pt for Hugging Face "
        "transformers (repeatable)",
    )


def warn_unchecked(args) -> None:  # type: ignore[no-untyped-def]
    """After ``convert``/``batch`` wrote with ``--no-check-crc``: one warning line on stderr
    (not with ``--quiet``), since damaged source data is then written with checksums of its
    own, which verify clean."""
    if args.no_check_crc and not args.quiet:
        print(
            "ckptconv: warning: the source's checksums were not checked (--no-check-crc): damaged "
            "tensor data would be written as read, with checksums of its own that verify clean; "
            'the output\'s __metadata__ records ckptconv.source_checksums: "not checked"',
            file=sys.stderr, flush=True,
        )


def convert_options(args) -> dict:  # type: ignore[no-untyped-def]
    """The keyword arguments of :func:`ckptconv.convert` that :func:`add_convert_options` set."""
    return dict(
        mapping=args.map,
        dtype=args.dtype,
        include_all=args.all,
        force=args.force,
        fsync=not args.no_fsync,
        checksum=not args.no_checksum,
        max_shard_size=args.max_shard_size,
        verify=args.verify,
        check_crc=not args.no_check_crc,
        metadata=dict(args.metadata) if args.metadata else None,
        allow_lossy=args.allow_lossy,
        any_suffix=args.any_suffix,
    )
