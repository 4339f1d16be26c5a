"""The one base of the errors a user's input causes (pure Python, importable from every layer).

A policy file, a store, a grid file, a command-line option or an explicit plan that cannot be used
raises a subclass of :class:`InputError` whose message names the input, the value and what is
allowed; the CLI prints that one line (exit 1, or 2 for usage) instead of a traceback.  It is a ``ValueError``, so
callers that caught ``ValueError`` before keep working.
"""

from __future__ import annotations


class DSV4TuneWarning(UserWarning):
    """Something was not as asked and dsv4-tune carried on: a policy selection fell back, a policy was
    measured with other tools, an environment switch had a value it does not know."""


class InputError(ValueError):
    """Bad input from the user (not a bug of dsv4-tune): the message says which and why."""

    exit_code = 1  # the CLI's exit status for it: 1 an input that cannot be used, 2 bad usage
