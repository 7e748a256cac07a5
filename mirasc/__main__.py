"""`python -m mirasc` is the `mirasc` command."""

from .cli import main

raise SystemExit(main())
