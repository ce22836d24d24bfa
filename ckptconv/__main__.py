"""``python -m ckptconv``: the command-line tool."""

from .cli import main

raise SystemExit(main())
