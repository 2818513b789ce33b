"""The argparse helpers every ``posenc`` subcommand uses: ranged numeric flags, JSON flags and :class:`UsageError`.

They are defined in :mod:`posenc._argtypes`, below the lab, so that the lab can build its flags from its dataclasses
(:mod:`posenc.lab.flags`) without importing the command line; this is the CLI's name for them.
"""

from posenc._argtypes import UsageError, float_in, int_in, json_object, ranged

__all__ = ["UsageError", "float_in", "int_in", "json_object", "ranged"]
