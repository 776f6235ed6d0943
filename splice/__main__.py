"""``python -m splice``: the command line (see :mod:`splice.cli`)."""

from .cli import main

raise SystemExit(main())
