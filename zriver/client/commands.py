"""Every verb, loaded: import ``REGISTRY`` from here (the CLI and the shell both do)."""

from zriver.client import verbs_cluster, verbs_sched, verbs_tasks  # noqa: F401  (they register verbs)
from zriver.client import verbs_tui  # noqa: F401  (shell, top)
from zriver.client import verbs_env  # noqa: F401  (env create, shell, commit...)
from zriver.client import verbs_keys  # noqa: F401  (init keys, keys new/host/add/list/revoke)
from zriver.client import verbs_sshkeys  # noqa: F401  (ssh-key add/list/rm)
from zriver.client import verbs_tokens  # noqa: F401  (token create/list/revoke, web)
from zriver.client import verbs_vps, verbs_ssh  # noqa: F401  (vps *, ssh, connect, forward)
from zriver.client import verbs_completion  # noqa: F401  (completion; __complete for its scripts)
from zriver.client import verbs_ops  # noqa: F401  (backup, init service)
from zriver.client.registry import REGISTRY, build_parser

__all__ = ["REGISTRY", "build_parser"]
