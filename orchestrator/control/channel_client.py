"""The manager's side of the channel (control/channel.py): ``orch`` and ``spawn-worker`` typed in
the manager send their command line to the control plane and print what it sends back.

Every command the manager runs starts an interpreter for this module, so it imports little (no
dataclasses, pathlib or subprocess at import): a request is a plain JSON object, the one
``channel.Request`` reads.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

from ..errors import EXIT_FAILURE, EXIT_INTERRUPTED, InvalidInput, UserError

# typing and collections.abc cost a manager's command a few milliseconds each: for the type
# checker alone (which takes any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from .channel import Request


class ChannelCut(Exception):
    """The control plane went away in the middle of a command (a restart)."""


RECONNECT_TIMEOUT = 120.0  # how long a command waits for a control plane that is restarting
# Commands that only look: run again from the start when the control plane went away meanwhile.
RERUN_SAFE = frozenset({"status", "wait", "result", "logs"})


def forward(path: str | os.PathLike[str], request: Request | Mapping[str, Any], *,
            reconnect: float = RECONNECT_TIMEOUT) -> int:  # fmt: skip
    """Send ``request`` to the control plane and print what it sends back; its exit code. A
    control plane that is restarting is waited for; a look (status, wait, result, logs) it cut
    short is asked again."""
    body = dict(request.to_json() if hasattr(request, "to_json") else request)
    command, argv = str(body.get("command")), list(body.get("argv") or ())
    for _ in range(3):
        try:
            return _forward_once(os.fspath(path), body, reconnect)
        except ChannelCut:
            if command != "orch" or not argv or argv[0] not in RERUN_SAFE:
                print(f"{command}: error: the control plane went away during the command (`orch status` says "
                      "what it did)", file=sys.stderr)  # fmt: skip
                return EXIT_FAILURE
            print(f"{command}: the control plane went away; asking again", file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except (OSError, ValueError) as exc:
            print(f"{command}: error: the control plane cannot be reached at {os.fspath(path)}: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    print(f"{command}: error: the control plane kept going away", file=sys.stderr)
    return EXIT_FAILURE


def _connect(path: str, reconnect: float) -> socket.socket:
    """A connection to the channel, waiting for a control plane that is (re)starting."""
    deadline = time.monotonic() + reconnect
    told = False
    while True:
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            if not told:
                print(f"waiting for the control plane ({path})", file=sys.stderr, flush=True)
                told = True
            time.sleep(0.5)


def _forward_once(path: str, body: Mapping[str, Any], reconnect: float) -> int:
    with _connect(path, reconnect) as sock:
        try:
            sock.sendall(json.dumps(body).encode() + b"\n")
            with sock.makefile("rb") as answers:
                for line in answers:
                    frame = json.loads(line)
                    if "exit" in frame:
                        return int(frame["exit"])
                    out = sys.stdout if "out" in frame else sys.stderr
                    out.write(frame.get("out", frame.get("err", "")))
                    out.flush()
        except (ConnectionError, ValueError):  # reset, or a line cut in two
            raise ChannelCut from None
    raise ChannelCut


def request_for(command: str, argv: Sequence[str], *, stdin_wanted: bool) -> dict[str, Any]:
    """The request for ``command argv`` as typed in the manager: a prompt file of the manager's is
    read here (the control plane has no access to the manager's files), and standard input when
    the command would read it."""
    argv = list(argv)
    text = None
    if "--file" in argv:
        at = argv.index("--file")
        if at + 1 < len(argv) and argv[at + 1] != "-":
            path = argv[at + 1]
            try:
                with open(path, "rb") as given:
                    text = given.read().decode("utf-8")
            except OSError as exc:
                raise InvalidInput(f"cannot read --file {path}: {exc.strerror}") from None
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"--file {path} is not UTF-8 text (byte {exc.start})") from None
            argv[at + 1] = "-"
        elif at + 1 < len(argv):
            text = sys.stdin.read()
    elif stdin_wanted and not sys.stdin.isatty():
        text = sys.stdin.read()
    tty = sys.stdout.isatty()
    columns = os.get_terminal_size().columns if tty else 80
    return {"command": command, "argv": argv, "stdin": text, "tty": tty, "columns": columns}


CHANNEL = "control.sock"


def client_main(command: str, argv: Sequence[str], control: str | os.PathLike[str]) -> int:
    """``orch`` or ``spawn-worker`` in the manager: the command line goes to the control plane,
    which does the work; a merge or push it made is fetched into the manager's clone."""
    wants_stdin = command == "orch" and argv[:1] == ["submit"] and "--prompt" not in argv
    try:
        if command == "orch" and argv[:1] == ["push"] and len(argv) > 1 and not argv[1].startswith("-"):
            argv = [*argv, "--bundle", _hand_over(argv[1])]
        request = request_for(command, argv, stdin_wanted=wants_stdin)
    except UserError as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    code = forward(os.path.join(control, CHANNEL), request)
    if code == 0 and command == "orch" and argv[:1] in (["merge"], ["push"]):
        _fetch_into_clone()
    return code


def _hand_over(branch: str) -> str:
    """The manager's side of `orch push`: the branch as a bundle in its workspace, which the
    control plane reads (handover.py); its name there."""
    from .. import environment, merge
    from ..handover import HANDOVER_DIR, check_target, make_bundle

    # Checked here too (the control plane checks again): a branch it would refuse is not bundled.
    prefix = environment.BRANCH_PREFIX.require(os.environ)
    check_target(branch, prefix, f"{prefix}{merge.INTEGRATION_BRANCH}")
    from pathlib import Path

    clone = Path(os.environ.get("WORKSPACE") or "/workspace") / "repo"
    return f"{HANDOVER_DIR}/{make_bundle(clone, branch).name}"


def _fetch_into_clone() -> None:
    """The manager's clone takes what the control plane just pushed (its origin is the mirror)."""
    import contextlib
    import subprocess

    clone = os.path.join(os.environ.get("WORKSPACE") or "/workspace", "repo")
    if os.path.isdir(os.path.join(clone, ".git")):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["git", "-C", clone, "fetch", "--quiet", "origin"], capture_output=True, timeout=120,
                           check=False)  # fmt: skip
