"""zriver: one executable that turns a handful of machines into one big computer.

Roles (chosen by subcommand): ``zriver host`` (coordinator), ``zriver runner`` (node agent),
``zriver up`` (both in one process) and the client verbs (``submit``, ``tasks``, ...).
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1

__all__ = ["__version__", "PROTOCOL_VERSION"]
