"""``python -m tabular_reference <command>``."""

from tabular_reference.cli import main

raise SystemExit(main())
