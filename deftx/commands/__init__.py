"""Subcommands of the ``deftx`` CLI, discovered by :mod:`deftx.cli`."""
