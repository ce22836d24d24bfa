"""``python -m ckptconv``, and the ``ckptconv`` command's entry point (:func:`run`).

The command line's modules are imported inside :func:`run`, not before it: a Ctrl-C while they
load (the first few hundredths of a second) ends the command as a Ctrl-C later does, with the
one interrupted line and exit status 130, not a traceback. (Only the interpreter's own
start-up, before any ckptconv code runs, is out of reach.)
"""

import sys


def run() -> int:
    """Run the command line on ``sys.argv``; return the exit status."""
    try:
        from .cli import main
    except KeyboardInterrupt as e:
        from .interrupts import report_early_interrupt

        return report_early_interrupt(e, sys.argv[1:])
    return main()


if __name__ == "__main__":
    raise SystemExit(run())
