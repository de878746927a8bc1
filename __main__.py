"""`python -m raftlite ...` is the same as the `raftlite` command."""

from raftlite.cli import main

raise SystemExit(main())
