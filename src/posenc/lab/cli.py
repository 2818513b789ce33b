"""Deprecated alias: the flags generated from the lab's configs are in :mod:`posenc.lab.flags`, the ``posenc lab``
commands in :mod:`posenc.cli.lab`. Importing this module warns; it will be removed."""

import warnings

from posenc.cli.lab import add_commands
from posenc.lab.flags import add_dataclass_flags, experiment_from_args

__all__ = ["add_commands", "add_dataclass_flags", "experiment_from_args"]

warnings.warn("posenc.lab.cli is deprecated: import add_dataclass_flags and experiment_from_args from "
              "posenc.lab.flags (the `posenc lab` commands are in posenc.cli.lab).", DeprecationWarning, stacklevel=2)
