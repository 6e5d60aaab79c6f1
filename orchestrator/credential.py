"""A git credential helper that answers with the git token for the repository's own URL and
for no other, whatever a repository's configuration asks git to reach.

git runs it as ``credential.helper`` (``python3 -P -m orchestrator.credential get``) with the
request on stdin (``protocol=``, ``host=``, ``path=``). The token comes from ``$GIT_TOKEN``
and the one URL it is for from ``$REPO_URL``, both in the environment of the git process that
asks: never in a URL, a file of the repository, or a command line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from . import environment
from .secrets import GIT_TOKEN_ENV

# How git is told to use it; useHttpPath makes git say which repository it wants.
HELPER = "!python3 -P -m orchestrator.credential"


def _normal_path(path: str) -> str:
    path = path.strip("/")
    return path.removesuffix(".git")


def answer(request: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str] | None:
    """The credentials for ``request``, or None when it is not for the repository's URL."""
    token = env.get(GIT_TOKEN_ENV)
    url = environment.REPO_URL.get(env)
    if not token or not url:
        return None
    wanted = urlsplit(url)
    if wanted.scheme not in ("https", "http") or request.get("protocol") != wanted.scheme:
        return None
    host = wanted.hostname or ""
    if wanted.port:
        host = f"{host}:{wanted.port}"
    if request.get("host", "").lower() != host.lower():
        return None
    if _normal_path(request.get("path", "")) != _normal_path(wanted.path):
        return None
    return {"username": environment.GIT_TOKEN_USER.require(env), "password": token}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] != ["get"]:
        return 0  # store and erase: nothing is kept
    request = {}
    for line in sys.stdin.read().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            request[key] = value
    found = answer(request, os.environ)
    if found:
        sys.stdout.write("".join(f"{key}={value}\n" for key, value in found.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
