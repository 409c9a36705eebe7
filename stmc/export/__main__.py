"""``python -m stmc.export``: see :mod:`stmc.export.cli`."""

from stmc.export.cli import main

raise SystemExit(main())
