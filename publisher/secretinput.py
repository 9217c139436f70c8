"""Secrets from somewhere other than the command line, which ``ps`` shows to every user.

Every secret option of ``gateway`` and ``kev-publish`` is looked up in this order: the flag
(``--secret-key VALUE``, or ``-`` for one line of standard input), its file flag
(``--secret-key-file PATH``, ``-`` = standard input), the environment variable
(``BACKEND_SECRET_KEY``), then the variable naming a file (``BACKEND_SECRET_KEY_FILE``: what
Docker and Kubernetes secrets mount). Environment and file are the preferred ways.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

__all__ = ["SecretError", "read_secret", "resolve_secret"]

STDIN = "-"


class SecretError(ValueError):
    """A secret that could not be read; the message names where it was looked for (never
    the secret)."""


def read_secret(source: str, *, what: str, stdin: TextIO | None = None) -> str:
    """The secret in file ``source`` (``-``: the first line of standard input), without its
    trailing newline. Raises :class:`SecretError` naming ``what`` and the file when it
    cannot be read or is empty."""
    if source == STDIN:
        text = (stdin or sys.stdin).readline()
        origin = "standard input"
    else:
        try:
            text = Path(source).read_text()
        except OSError as exc:
            raise SecretError(f"{what}: cannot read {source}: {exc.strerror}") from None
        origin = source
    secret = text.rstrip("\r\n")
    if not secret:
        raise SecretError(f"{what}: {origin} is empty")
    return secret


def resolve_secret(
    value: str | None,
    file: str | None,
    environ: Mapping[str, str],
    env: str,
    *,
    what: str,
    stdin: TextIO | None = None,
) -> str | None:
    """The secret from the first of: ``value`` (``-`` reads standard input), ``file``, the
    variable ``env``, the file named by ``env + "_FILE"``; None when none is given. ``what``
    names the option in errors (e.g. ``"--secret-key"``)."""
    if value is not None:
        return read_secret(STDIN, what=what, stdin=stdin) if value == STDIN else value
    if file is not None:
        return read_secret(file, what=f"{what}-file", stdin=stdin)
    if environ.get(env):
        return environ[env]
    if environ.get(env + "_FILE"):
        return read_secret(environ[env + "_FILE"], what=f"{env}_FILE", stdin=stdin)
    return None
