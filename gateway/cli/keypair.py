"""The keypair flags ``gateway sign`` and ``gateway tail`` share: the access key from a flag
or ``BACKEND_ACCESS_KEY``, the secret key from ``--secret-key`` (``-`` reads stdin),
``--secret-key-file``, ``BACKEND_SECRET_KEY`` or ``BACKEND_SECRET_KEY_FILE`` (the SDK's
variables; a file or the environment keeps the secret out of ``ps``)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from publisher.secretinput import SecretError, resolve_secret

__all__ = ["KeypairMissing", "add_keypair_flags", "keypair_from"]


class KeypairMissing(ValueError):
    """No usable keypair was given; the message says how to give one."""


def add_keypair_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--access-key", help="env BACKEND_ACCESS_KEY")
    parser.add_argument(
        "--secret-key", help="- reads stdin; prefer env BACKEND_SECRET_KEY or --secret-key-file"
    )
    parser.add_argument(
        "--secret-key-file", metavar="PATH", help="- = stdin; env BACKEND_SECRET_KEY_FILE"
    )


def keypair_from(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, str]:
    """``(access_key, secret_key)`` from the flags, then the environment.

    :raises KeypairMissing: either is missing, or a secret file cannot be read.
    """
    try:
        secret_key = resolve_secret(
            args.secret_key, args.secret_key_file, environ, "BACKEND_SECRET_KEY",
            what="--secret-key",
        )  # fmt: skip
    except SecretError as exc:
        raise KeypairMissing(str(exc)) from None
    access_key = args.access_key or environ.get("BACKEND_ACCESS_KEY")
    if not access_key or not secret_key:
        raise KeypairMissing(
            "give --access-key and --secret-key[-file] (or BACKEND_ACCESS_KEY and "
            "BACKEND_SECRET_KEY[_FILE])"
        )
    return access_key, secret_key
