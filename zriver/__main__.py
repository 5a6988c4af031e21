"""``python -m zriver`` is the same as the ``zriver`` executable."""

from zriver.cli import main

raise SystemExit(main())
