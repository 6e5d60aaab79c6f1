"""The channel between the manager and the control plane: ``orch`` and ``spawn-worker`` run in the
manager as they always did, but their work is done by the control plane, which holds the Docker
socket, the credentials and the only writable copy of the batch's state.

The protocol, over a Unix socket on a volume the two share (``/run/orchestrator/control.sock``):
the client sends one JSON line, a ``Request`` (which command, its argv, what it read from its
standard input, whether it is on a terminal); the server checks it (control/policy.py) and runs
the command, then sends what it printed as JSON lines, ``{"out": TEXT}`` and ``{"err": TEXT}``, and
last ``{"exit": CODE}``. On a terminal the command runs on a pseudo-terminal, so that it draws its
progress and redraws its table as it would in a shell. A client that goes away (Ctrl-C) ends the
command.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import signal
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import EXIT_FAILURE, InvalidInput, UserError

# One request line: the argv and a prompt read from stdin (at most 1 MiB of UTF-8, as orch takes).
REQUEST_LIMIT = 4 * 1024 * 1024
COMMANDS = {"orch": "orchestrator.orch", "spawn-worker": "orchestrator.spawn"}
READ_CHUNK = 65536
MAX_COMMANDS = 32  # commands the control plane runs for the manager at once (orch wait holds one)


@dataclass(frozen=True)
class Request:
    command: str  # "orch" or "spawn-worker"
    argv: tuple[str, ...]
    stdin: str | None = None  # what the client read from its standard input, when the command wants it
    tty: bool = False  # the client's output is a terminal
    columns: int = 80

    @classmethod
    def from_json(cls, data: Any) -> Request:
        if not isinstance(data, dict):
            raise InvalidInput("a request is a JSON object")
        command, argv, stdin = data.get("command"), data.get("argv"), data.get("stdin")
        if command not in COMMANDS:
            raise InvalidInput(f"the control plane runs {' and '.join(COMMANDS)}, not {command!r}")
        if not isinstance(argv, list) or not all(isinstance(a, str) and "\0" not in a for a in argv):
            raise InvalidInput("argv must be a list of strings")
        if stdin is not None and not isinstance(stdin, str):
            raise InvalidInput("stdin must be text")
        columns = data.get("columns")
        return cls(
            command,
            tuple(argv),
            stdin,
            bool(data.get("tty")),
            columns if isinstance(columns, int) and 20 <= columns <= 1000 else 80,
        )

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "argv": list(self.argv), "stdin": self.stdin, "tty": self.tty,
                "columns": self.columns}  # fmt: skip


# --- The server side.

Checker = Callable[[Request], None]


class ChannelServer:
    """Serves requests on a Unix socket; ``check`` refuses what the manager may not ask
    (InvalidInput with the reason); ``env`` is the environment the commands run with (the
    control plane's: its settings and credentials, never the manager's)."""

    def __init__(self, path: Path, *, check: Checker, env: Mapping[str, str], mode: int = 0o660):
        self.path = path
        self.check = check
        self.env = dict(env)
        self.mode = mode
        self.slots = threading.BoundedSemaphore(MAX_COMMANDS)
        self._server: _UnixServer | None = None

    def start(self) -> ChannelServer:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        server = _UnixServer(str(self.path), _Handler)
        server.channel = self
        os.chmod(self.path, self.mode)
        self._server = server
        threading.Thread(target=server.serve_forever, name="channel", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    channel: ChannelServer


class _Handler(socketserver.StreamRequestHandler):
    server: _UnixServer

    def handle(self) -> None:
        channel = self.server.channel
        # A manager that opens commands without end gets a refusal, not the control plane's last process.
        try:
            if not channel.slots.acquire(blocking=False):
                # Its request read first (briefly): a socket closed on unread data resets the
                # client before it reads why.
                self.connection.settimeout(5)
                with contextlib.suppress(OSError):
                    self.rfile.readline(REQUEST_LIMIT + 1)
                self._send({"err": f"control plane: error: {MAX_COMMANDS} commands run at once already; try again\n"})
                self._send({"exit": EXIT_FAILURE})
                return
            try:
                self._handle(channel)
            finally:
                channel.slots.release()
        except OSError:
            pass  # the client went away: nobody is left to tell

    def _handle(self, channel: ChannelServer) -> None:
        line = self.rfile.readline(REQUEST_LIMIT + 1)
        try:
            if len(line) > REQUEST_LIMIT:
                raise InvalidInput(f"the request is over {REQUEST_LIMIT} bytes")
            request = Request.from_json(json.loads(line or b"null"))
            channel.check(request)
        except (ValueError, UserError) as exc:
            self._send({"err": f"{_name(line)}: error: {exc}\n"})
            self._send({"exit": getattr(exc, "exit_code", 2)})
            return
        code = run(request, channel.env, self._send, self.connection)
        with contextlib.suppress(OSError):
            self._send({"exit": code})

    def _send(self, frame: Mapping[str, Any]) -> None:
        self.wfile.write(json.dumps(frame).encode() + b"\n")
        self.wfile.flush()


def _name(line: bytes) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        command = json.loads(line).get("command")
        if command in COMMANDS:
            return str(command)
    return "control plane"


def run(
    request: Request, env: Mapping[str, str], send: Callable[[Mapping[str, Any]], None], peer: socket.socket
) -> int:
    """Run the command, sending what it prints as it prints it; end it when the peer goes away."""
    if request.command == "spawn-worker":
        from .. import spawn

        served = spawn.serve(request.argv, env)  # here, not in an interpreter of its own
        if served is not None:
            code, out, err = served
            for name, text in (("out", out), ("err", err)):
                if text:
                    send({name: text})
            return code
    argv = [sys.executable, "-P", "-m", COMMANDS[request.command], *request.argv]
    child_env = {**env, "COLUMNS": str(request.columns)}
    if request.tty:
        main_fd, sub_fd = pty.openpty()
        proc = subprocess.Popen(argv, env=child_env, stdin=subprocess.PIPE, stdout=sub_fd, stderr=sub_fd,
                                start_new_session=True)  # fmt: skip
        os.close(sub_fd)
        streams: dict[int, str] = {main_fd: "out"}
    else:
        proc = subprocess.Popen(argv, env=child_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        streams = {proc.stdout.fileno(): "out", proc.stderr.fileno(): "err"}
    _feed(proc.stdin, request.stdin)
    try:
        for name, data in _read(streams, peer):
            send({name: data.decode("utf-8", "replace")})
    except OSError:
        pass  # the client went away
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
        for fd in streams:
            with contextlib.suppress(OSError):
                os.close(fd)
    return code if code >= 0 else 128 - code


def _feed(stdin: IO[bytes] | None, text: str | None) -> None:
    if stdin is None:
        return
    with contextlib.suppress(BrokenPipeError, OSError):
        if text:
            stdin.write(text.encode("utf-8"))
        stdin.close()


def _read(streams: dict[int, str], peer: socket.socket) -> Iterator[tuple[str, bytes]]:
    """What the command prints, as it comes, until its outputs close; stops early (OSError) when
    the client has gone away (it sends nothing after its request: what it sends is dropped)."""
    open_fds = set(streams)
    peer_fd = peer.fileno()
    while open_fds:
        ready, _, _ = select.select([*open_fds, peer_fd], [], [], 1.0)
        for fd in ready:
            if fd == peer_fd:
                if not peer.recv(READ_CHUNK):
                    raise OSError("the client went away")
                continue
            try:
                data = os.read(fd, READ_CHUNK)
            except OSError:  # a pseudo-terminal's end of output
                data = b""
            if not data:
                open_fds.discard(fd)
                continue
            yield streams[fd], data


# The client side (in the manager) is channel_client.py, which imports little: every command the
# manager runs pays for its imports.
from .channel_client import (  # noqa: E402  (re-exported for the callers of the channel)
    CHANNEL,
    RECONNECT_TIMEOUT,
    RERUN_SAFE,
    ChannelCut,
    client_main,
    forward,
)

__all__ = ["CHANNEL", "RECONNECT_TIMEOUT", "RERUN_SAFE", "ChannelCut", "ChannelServer", "Request", "client_main",
           "forward", "run"]  # fmt: skip
