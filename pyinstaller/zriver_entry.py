"""Entry script of the single-file binary: every role (host, runner, up, client verbs)."""

from zriver.cli import main

raise SystemExit(main())
