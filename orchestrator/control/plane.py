"""The control plane: the one trusted container of an orchestration (``NAME-control``).

It holds what must be trusted, and runs no agent: the Docker socket, the Claude credential, the
git token and SSH key, the dispatcher, the mirror of origin, and the API relay. The manager holds
none of it and asks, over the channel (channel.py), for the operations of a batch, which the
control plane checks (policy.py) and carries out; the manager's ``docker`` reaches the engine
through a filter (docker_api.py) that lets through what the original design uses it for, on
this orchestration's workers only; the manager's Claude Code reaches the API through the relay,
with a ticket only the relay takes. It never takes repository content, prompts or agent output as
instructions: they are data it stores, checks and passes on.

What it serves, in ``/run/orchestrator`` (a volume it shares with the manager, mounted read-only
there; a socket can be reached on a read-only mount):

- ``control.sock``: the channel for ``orch`` and ``spawn-worker``;
- ``docker.sock``: the filtered Docker API (the manager's ``DOCKER_HOST``);
- ``relay.sock``: the API relay (the manager has no network; its entrypoint opens a door to this
  on its own loopback for its Claude Code, door.py);
- ``endpoints.json``: where the manager's Claude Code finds the relay, and its ticket.

And, in ``/run/orchestrator-workers`` (the ``NAME-doors`` volume, which every worker it starts
mounts read-only), what its workers reach it through, holding no credential (tickets.py):

- ``relay.sock``: the same relay, for each worker's agent, with its task's relay ticket;
- ``git.sock``: the git channel, for each worker's runtime: the mirror made fresh, and its
  task's branch handed back and pushed (git_channel.py);
- ``egress.sock``: the egress proxy, for each worker's agent, with its task's egress ticket: the
  only way out of a worker, which has no network, to the hosts of its task's policy
  (egress_service.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .. import config, environment, git
from ..cli import HelpFormatter, run_command
from ..context import Context
from ..dispatcher import ensure_dispatcher
from ..errors import UserError
from ..relay import ApiRelay, RelaySettings
from ..relay_request import Notice, NoticeKind
from ..scripted.server import ScriptedAPI
from ..secrets import GIT_TOKEN_ENV, Secrets, scrubber
from ..spending import (
    MANAGER_ACCOUNT,
    ORCHESTRATION_ACCOUNT,
    SpendWriter,
    WorkerAccounts,
    open_orchestration,
    task_account,
)
from ..store import write_json
from ..tickets import Tickets, key_folder
from ..views import load_views
from . import policy, rehearsal
from .board_serve import ServedBoard, board_address, serve_board
from .channel import ChannelServer
from .docker_api import DockerApiFilter
from .docker_rules import WorkerPolicy
from .door import Door, listen_unix, tcp
from .egress_service import EgressService
from .endpoints import Endpoints
from .git_channel import SOCKET as GIT_SOCKET
from .git_channel import GitChannel
from .mirror import Mirror
from .swarm_doors import join_network as join_swarm_network
from .swarm_doors import serve as serve_swarm

RUN_DIR = Path("/run/orchestrator")
CHANNEL = "control.sock"
DOCKER = "docker.sock"
RELAY = "relay.sock"
DOORS_DIR = Path("/run/orchestrator-workers")
HANDBACK_WORK = "handback.git"  # in its workspace: where workers' hand-backs are checked
STATE = ".control-state.json"  # in its home: the manager's ticket, kept over a restart


def upstream_socket(env: Mapping[str, str]) -> Path:
    """The engine's socket, as run.py mounted it (DOCKER_HOST)."""
    host = env.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        raise UserError(f"DOCKER_HOST is {host}: the control plane needs the engine's Unix socket")
    return Path(urlparse(host).path)


def commands_env(env: Mapping[str, str], secrets: Secrets) -> dict[str, str]:
    """The environment of the commands the control plane runs for the manager: its own, with the
    credentials where its commands look for them (never in a container's environment)."""
    found = dict(env)
    if secrets.claude is not None:
        found[secrets.claude.env_name] = secrets.claude.value
    if secrets.git_token:
        found[GIT_TOKEN_ENV] = secrets.git_token
    return found


class ControlPlane:
    def __init__(self, ctx: Context, secrets: Secrets, run_dir: Path, doors_dir: Path = DOORS_DIR):
        self.ctx = ctx
        self.secrets = secrets
        self.run_dir = run_dir
        self.doors_dir = doors_dir
        self.env = commands_env(ctx.env, secrets)
        self.stopping = threading.Event()
        self._spend: SpendWriter | None = None

    def say(self, message: str) -> None:
        print(f"control: {scrubber(self.secrets.values())(message)}", flush=True)

    def _on_notice(self, notice: Notice) -> None:
        self.say(notice.message)
        if self._spend is not None:
            self._spend.notice(notice)

    def run(self) -> int:
        ctx, settings = self.ctx, self.ctx.settings
        if self.secrets.claude is None:
            raise UserError("no Claude credential was given to the control plane (run.py copies it in)")
        ctx.orch.ensure()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        home = Path(ctx.env.get("HOME") or Path.home())
        git.configure_identity(environment.GIT_USER_NAME.get(ctx.env), environment.GIT_USER_EMAIL.get(ctx.env))
        git.configure_credentials()
        git.prepare_ssh(home)
        api_url, model = settings.api_url, None
        if which := environment.REHEARSAL.get(ctx.env):
            model = self.start_rehearsal(which, home)
            api_url = model.url
        mirror = None
        git_env: dict[str, str] = {}
        if settings.repo_url:
            # What git needs to reach origin: the token for the credential helper, which answers for
            # this URL alone.
            git_env = {environment.REPO_URL.name: settings.repo_url}
            if self.secrets.git_token:
                git_env[GIT_TOKEN_ENV] = self.secrets.git_token
            mirror = Mirror(
                Path(environment.MIRROR_DIR.require(ctx.env)), settings.repo_url, env=git_env,
                scrub=scrubber(self.secrets.values()),
            )  # fmt: skip
            self.say(f"fetching {settings.repo_url} into the mirror")
            mirror.refresh()
            self.prepare_clone(mirror, git_env)
        # A swarm's jobs may run on other nodes: the control plane joins their network first, so that
        # every spawn (the channel's, the dispatcher's) names its address as the jobs' name server.
        swarm_address = None
        if settings.engine == config.ENGINE_SWARM:
            swarm_address = join_swarm_network(settings.volume, environment.CONTROL_NAME.require(ctx.env))
            self.env[environment.SWARM_CONTROL_ADDRESS.name] = swarm_address
            self.ctx = ctx = dataclasses.replace(
                ctx, env={**ctx.env, environment.SWARM_CONTROL_ADDRESS.name: swarm_address}
            )
        channel = ChannelServer(
            self.run_dir / CHANNEL, check=lambda request: policy.check(request, self.env), env=self.env, mode=0o666
        ).start()
        docker_filter = DockerApiFilter(
            self.run_dir / DOCKER, upstream_socket(ctx.env), WorkerPolicy(settings.volume), mode=0o666,
            on_refused=lambda method, path, reason: self.say(f"refused the manager's {method} {path[:200]}: {reason}"),
        ).start()  # fmt: skip
        relay = ApiRelay(
            self.secrets.claude,
            api_url,
            on_notice=self._on_notice,
            settings=RelaySettings(
                host="127.0.0.1", port=0, max_in_flight=environment.API_IN_FLIGHT.whole_number(ctx.env)
            ),
        ).start()
        # Kept in its own home (the container's, which a restart keeps): a control plane that is
        # restarted takes the ticket the manager's Claude Code holds.
        # The manager spends under the person's ceiling (run.py --budget-usd), as the batch does.
        spend = self._spend = SpendWriter(relay.ledger, ctx.orch, gate=relay.gate.view)
        if spend.restore():
            self.say("took back what the orchestration's agents had spent, from spend.json")
        open_orchestration(relay.ledger, ctx.env)
        ticket = relay.issue_ticket(MANAGER_ACCOUNT, parent=ORCHESTRATION_ACCOUNT,
                                    ticket=self.load_state(home).get("manager_ticket"))  # fmt: skip
        self.save_state(home, {"manager_ticket": ticket})
        port = int(relay.url.rsplit(":", 1)[1])
        # The manager has no network: it reaches the relay through a Unix socket here.
        door = Door(listen_unix(self.run_dir / RELAY, 0o666), tcp("127.0.0.1", port)).start()
        # Its workers too, with a ticket of their task's (made by its spawns, with the key it keeps).
        tickets = Tickets.in_folder(key_folder(ctx.env), create=True)
        assert tickets is not None
        relay.ledger.resolver = WorkerAccounts(relay.ledger, tickets, ctx.orch, ctx.env)
        spend.start()
        self.doors_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.doors_dir, 0o755)
        worker_door = Door(listen_unix(self.doors_dir / RELAY, 0o666), tcp("127.0.0.1", port)).start()
        egress = EgressService(
            self.doors_dir, tickets, ctx.orch, ctx.env, settings.image_prefix,
            on_refused=lambda task, line: relay.notify(NoticeKind.REFUSED, task_account(task), line),
        ).start()  # fmt: skip
        git_channel = None
        if mirror is not None:
            git_channel = GitChannel(
                self.doors_dir / GIT_SOCKET, tickets=tickets, orch=ctx.orch, mirror=mirror,
                work=settings.workspace / HANDBACK_WORK, env=git_env, scrub=scrubber(self.secrets.values()),
                prefix=settings.branch_prefix, say=self.say,
            ).start()  # fmt: skip
        # A swarm's jobs may run on other nodes: the same services, on the batch's internal network.
        swarm_doors = [] if swarm_address is None else serve_swarm(swarm_address, port, self.doors_dir, self.say)
        resumed = self.resume()
        board = self.start_board(home, mirror)
        Endpoints(
            relay_socket=str(self.run_dir / RELAY),
            ticket=ticket,
            api_key=self.secrets.claude.is_api_key,
            mirror=str(mirror.path) if mirror else None,
            resumed=resumed,  # the manager says so to its person
        ).write(self.run_dir)
        self.say(f"serving the manager in {self.run_dir}")
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stopping.set())
        self.stopping.wait()
        self.say("stopping")
        if board is not None:
            board.stop()
        door.close()
        worker_door.close()
        for served in swarm_doors:
            if isinstance(served, Door):
                served.close()
            else:
                served.stop()
        egress.stop()
        spend.stop()
        if git_channel is not None and (cut := git_channel.stop()):
            self.say(f"git channel: {cut} request(s) still under way were cut; their workers ask again")
        for server in (channel, docker_filter, relay):
            server.stop()
        if model is not None:
            model.stop()
        return 0

    def start_rehearsal(self, which: str, home: Path) -> ScriptedAPI:
        """A rehearsal's origin (made once) and its scripted model (control/rehearsal.py)."""
        settings = self.ctx.settings
        if not settings.repo_url:
            raise UserError("a rehearsal needs its origin's path in REPO_URL (run.py --rehearsal sets it)")
        access = {GIT_TOKEN_ENV: self.secrets.git_token} if self.secrets.git_token else {}
        rehearsal.prepare_origin(Path(settings.repo_url), settings.branch,
                                 environment.REHEARSAL_SOURCE.get(self.ctx.env), access, self.say)  # fmt: skip
        return rehearsal.serve_model(which, home, self.say)

    def start_board(self, home: Path, mirror: Mirror | None) -> ServedBoard | None:
        """The board, on the port run.py publishes (none when it gave none). A board that cannot
        start is said, and the batch goes on without it."""
        given = environment.DASHBOARD_PORT.get(self.ctx.env)
        if not given:
            return None
        settings = self.ctx.settings
        clone = settings.workspace / "repo"
        try:
            port = environment.DASHBOARD_PORT.whole_number(self.ctx.env)
            board = serve_board(
                self.ctx_for_commands(), port, home, [mirror.path, clone] if mirror else [],
                clone if mirror else None, host_network=settings.network == "host",
            )  # fmt: skip
        except (OSError, UserError) as exc:
            self.say(f"the board could not start: {exc}")
            return None
        # The address only: the secret is for the person (orch dashboard --login, on the host).
        self.say(f"serving the board at {board_address(port)}")
        return board

    @staticmethod
    def load_state(home: Path) -> dict[str, Any]:
        try:
            found = json.loads((home / STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    @staticmethod
    def save_state(home: Path, state: Mapping[str, Any]) -> None:
        write_json(home / STATE, dict(state))
        os.chmod(home / STATE, 0o600)

    def prepare_clone(self, mirror: Mirror, git_env: Mapping[str, str]) -> None:
        """The control plane's own clone, where `orch merge` and `orch push` work: it borrows the
        mirror's objects; its origin is the repository itself."""
        clone = self.ctx.settings.workspace / "repo"
        if not (clone / ".git").is_dir():
            git.git("clone", "--quiet", "--shared", "--branch", self.ctx.settings.branch, "--", str(mirror.path),
                    str(clone), timeout=git.CLONE_TIMEOUT)  # fmt: skip
        git.git("remote", "set-url", "origin", mirror.url, cwd=clone)
        git.git("fetch", "--quiet", "origin", cwd=clone, timeout=git.CLONE_TIMEOUT, env=git_env,
                scrub=scrubber(self.secrets.values()))  # fmt: skip

    def resume(self) -> int:
        """A batch under way (a control plane restarted, a new manager) is taken over; how many of
        its tasks are queued or running (0: none was under way)."""
        from ..batch import needs_dispatcher
        from ..tasks import ACTIVE_STATES, State

        views = load_views(self.ctx.orch)
        limit = self.ctx.orch.load_settings().resume_limit(self.ctx.settings.resume_interrupted)
        if not needs_dispatcher(views, limit):
            return 0
        pending = [v.id for v in views if v.state is State.QUEUED or v.state in ACTIVE_STATES]
        if ensure_dispatcher(self.ctx_for_commands()):
            self.say(f"a batch was under way ({len(pending)} task(s) queued or running): its dispatcher is started")
        return len(pending)

    def ctx_for_commands(self) -> Context:
        return Context(settings=self.ctx.settings, orch=self.ctx.orch, engine=self.ctx.engine, env=self.env)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="control",
        formatter_class=HelpFormatter,
        description="The control plane of an orchestration: holds the Docker socket and the credentials, runs the "
        "dispatcher, and serves the manager (the channel for orch and spawn-worker, the filtered Docker API, the API "
        "relay). bin/run.py starts it; configured by the same environment as the manager.",
    )
    parser.add_argument("--run-dir", default=str(RUN_DIR), help=f"where to serve the manager (default: {RUN_DIR})")
    parser.add_argument(
        "--doors-dir", default=str(DOORS_DIR), help=f"where to serve its workers (default: {DOORS_DIR})"
    )
    parser.add_argument("--debug", action="store_true", help="tracebacks of expected failures")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    env = dict(os.environ)  # read here, and nowhere below
    args = build_parser().parse_args(argv)
    os.umask(0o007)

    def work() -> int:
        ctx = Context.build(env)
        secrets = Secrets.take_copy(Path(env.get("HOME") or Path.home()))
        return ControlPlane(ctx, secrets, Path(args.run_dir), Path(args.doors_dir)).run()

    return run_command("control", work, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
