"""`python -m monitor ...`: the command line client (see monitor/cli.py)."""
from monitor.cli import main

raise SystemExit(main())
