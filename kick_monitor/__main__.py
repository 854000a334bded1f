"""`python -m kick_monitor`: the same command as `kick-monitor`."""

from .cli.main import main

raise SystemExit(main())
