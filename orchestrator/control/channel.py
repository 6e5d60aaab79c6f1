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
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import EXIT_FAILURE, EXIT_INTERRUPTED, InvalidInput, UserError

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


# --- The client side (in the manager).


class ChannelCut(Exception):
    """The control plane went away in the middle of a command (a restart)."""


RECONNECT_TIMEOUT = 120.0  # how long a command waits for a control plane that is restarting
# Commands that only look: run again from the start when the control plane went away meanwhile.
RERUN_SAFE = frozenset({"status", "wait", "result", "logs"})


def forward(path: Path, request: Request, *, reconnect: float = RECONNECT_TIMEOUT) -> int:
    """Send ``request`` to the control plane and print what it sends back; its exit code. A
    control plane that is restarting is waited for; a look (status, wait, result, logs) it cut
    short is asked again."""
    for _ in range(3):
        try:
            return _forward_once(path, request, reconnect)
        except ChannelCut:
            if request.command != "orch" or request.argv[:1] == () or request.argv[0] not in RERUN_SAFE:
                print(f"{request.command}: error: the control plane went away during the command (`orch status` says "
                      "what it did)", file=sys.stderr)  # fmt: skip
                return EXIT_FAILURE
            print(f"{request.command}: the control plane went away; asking again", file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except (OSError, ValueError) as exc:
            print(f"{request.command}: error: the control plane cannot be reached at {path}: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    print(f"{request.command}: error: the control plane kept going away", file=sys.stderr)
    return EXIT_FAILURE


def _connect(path: Path, reconnect: float) -> socket.socket:
    """A connection to the channel, waiting for a control plane that is (re)starting."""
    deadline = time.monotonic() + reconnect
    told = False
    while True:
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            if not told:
                print(f"waiting for the control plane ({path})", file=sys.stderr, flush=True)
                told = True
            time.sleep(0.5)


def _forward_once(path: Path, request: Request, reconnect: float) -> int:
    with _connect(path, reconnect) as sock:
        try:
            sock.sendall(json.dumps(request.to_json()).encode() + b"\n")
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


def request_for(command: str, argv: Sequence[str], *, stdin_wanted: bool) -> Request:
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
                text = Path(path).read_bytes().decode("utf-8")
            except OSError as exc:
                raise InvalidInput(f"cannot read --file {path}: {exc.strerror}") from None
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"--file {path} is not UTF-8 text (byte {exc.start})") from None
            argv[at + 1] = "-"
        elif at + 1 < len(argv):
            text = sys.stdin.read()
    elif stdin_wanted and not sys.stdin.isatty():
        text = sys.stdin.read()
    columns = os.get_terminal_size().columns if sys.stdout.isatty() else 80
    return Request(command, tuple(argv), text, sys.stdout.isatty(), columns)


CHANNEL = "control.sock"


def client_main(command: str, argv: Sequence[str], control: Path) -> int:
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
    code = forward(control / CHANNEL, request)
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
    clone = Path(os.environ.get("WORKSPACE") or "/workspace") / "repo"
    return f"{HANDOVER_DIR}/{make_bundle(clone, branch).name}"


def _fetch_into_clone() -> None:
    """The manager's clone takes what the control plane just pushed (its origin is the mirror)."""
    clone = Path(os.environ.get("WORKSPACE") or "/workspace") / "repo"
    if (clone / ".git").is_dir():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["git", "-C", str(clone), "fetch", "--quiet", "origin"], capture_output=True, timeout=120,
                           check=False)  # fmt: skip
