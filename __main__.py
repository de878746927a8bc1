"""`python -m raftlite ...` is the same as the `raftlite` command."""

from .cli import main

raise SystemExit(main())
