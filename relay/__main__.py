"""``python -m relay``: the same command line as ``relaynet``."""

from relay.cli import main

raise SystemExit(main())
