"""Exceptions raised by cortexcl."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a data file, an argument or a configuration.

    The message is a single line that names the offending file (or option) and says what is
    wrong with it. The command-line interface prints it without a traceback and exits with
    status 2.
    """
