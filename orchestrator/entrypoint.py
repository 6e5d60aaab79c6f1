"""The manager container's entrypoint.

Sets up git and SSH, clones the repository when one is given, makes sure the shared
folders exist, pre-seeds Claude Code's configuration so that no first-run dialog blocks a
fresh container, then replaces itself with Claude Code (the Smart Manager) or with the
command given after ``--``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import environment, git
from .batch import needs_dispatcher
from .cli import run_command
from .context import Context
from .control.door import listen_tcp
from .control.endpoints import ENDPOINTS, Endpoints
from .dispatcher import ensure_dispatcher
from .docker import DaemonUnreachable, DockerMissing, check_daemon
from .errors import UserError
from .secrets import API_KEY_ENV, GIT_TOKEN_ENV, OAUTH_TOKEN_ENV, Secrets, env_secrets, scrubber
from .store import OrchestrationDir, write_json
from .tasks import ACTIVE_STATES, State
from .views import load_views

SYSTEM_PROMPT = Path(__file__).with_name("system-prompt.md")


def manager_argv(model: str | None, request: str | None = None) -> list[str]:
    """The interactive Smart Manager, started on ``request`` when one is given (a rehearsal's).
    Every flag here is in ``claude --help``; a prompt given as its last argument is the first
    thing the person's session asks."""
    argv = ["claude", "--dangerously-skip-permissions"]
    if model:
        argv += ["--model", model]
    argv += ["--append-system-prompt", SYSTEM_PROMPT.read_text(encoding="utf-8")]
    if request and request.strip():
        # Never read as an option of claude's, whatever it begins with.
        argv.append(request.strip() if not request.strip().startswith("-") else f"Request: {request.strip()}")
    return argv


def _load_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def preseed_claude_config(home: Path, project_dir: Path, api_key: str | None = None) -> None:
    """Answer Claude Code's first-run questions in advance.

    Onboarding and theme live in ~/.claude.json, folder trust per project there too, and the
    approval of a custom API key (by its last 20 characters, as Claude Code records it); the
    bypass-permissions warning is accepted in ~/.claude/settings.json. Existing values win.
    """
    state_path = home / ".claude.json"
    state = _load_json_object(state_path)
    state.setdefault("hasCompletedOnboarding", True)
    if api_key:
        approved = state.setdefault("customApiKeyResponses", {}).setdefault("approved", [])
        if api_key[-20:] not in approved:
            approved.append(api_key[-20:])
    state.setdefault("theme", "dark")
    project = state.setdefault("projects", {}).setdefault(str(project_dir), {})
    project.setdefault("hasTrustDialogAccepted", True)
    project.setdefault("hasCompletedProjectOnboarding", True)
    write_json(state_path, state)

    settings_path = home / ".claude" / "settings.json"
    settings_path.parent.mkdir(parents=True, exist_ok=True)
    settings = _load_json_object(settings_path)
    settings.setdefault("skipDangerousModePermissionPrompt", True)
    write_json(settings_path, settings)


def resume_batch(ctx: Context) -> None:
    """A manager started on a volume with work under way takes it over (see orch's dispatcher)."""
    orch = ctx.orch
    views = load_views(orch)
    pending = [v.id for v in views if v.state is State.QUEUED or v.state in ACTIVE_STATES]
    limit = orch.load_settings().resume_limit(ctx.settings.resume_interrupted)
    if needs_dispatcher(views, limit) and ensure_dispatcher(ctx):
        print(f"manager: resuming the batch: {len(pending)} task(s) queued or running", file=sys.stderr, flush=True)


def load_secrets(home: Path, env: dict[str, str]) -> None:
    """Put the secrets run.py copied into the home into the environment of what runs next
    (Claude Code needs its credential there, git its token), never into the container's."""
    secrets = Secrets.take_copy(home)
    if secrets.claude is not None:
        env[secrets.claude.env_name] = secrets.claude.value
    if secrets.git_token:
        env[GIT_TOKEN_ENV] = secrets.git_token


ENDPOINTS_TIMEOUT = 180.0
REPO_MARK = ".orchestrator-repo"  # what the clone in the workspace is of: "URL BRANCH"


def prepare_without_secrets(env: dict[str, str], control: Path) -> Path:
    """The manager of a control plane: it holds nothing. Its Claude Code reaches the API through
    the control plane's relay, with a ticket of its own; its clone borrows from the mirror the
    control plane keeps (its origin), read-only; orch, spawn-worker and docker reach the control
    plane (see orch.py, spawn.py, and DOCKER_HOST)."""
    os.umask(OrchestrationDir.UMASK)
    home = Path(env.get("HOME") or Path.home())
    endpoints = wait_for(control)
    if endpoints.resumed:
        print(f"manager: resuming the batch: {endpoints.resumed} task(s) queued or running (the control plane's "
              "dispatcher runs them)", file=sys.stderr, flush=True)  # fmt: skip
    env["ANTHROPIC_BASE_URL"] = open_relay_door(Path(endpoints.relay_socket))
    env[API_KEY_ENV if endpoints.api_key else OAUTH_TOKEN_ENV] = endpoints.ticket
    git.configure_identity(environment.GIT_USER_NAME.get(env), environment.GIT_USER_EMAIL.get(env))
    workspace = Path(environment.WORKSPACE.require(env))
    workdir = workspace
    repo_url = environment.REPO_URL.get(env)
    mirror = endpoints.mirror
    if repo_url and mirror:
        workdir = workspace / "repo"
        branch = environment.REPO_BRANCH.require(env)
        check_clone_of(workspace, repo_url, branch)
        if not (workdir / ".git").is_dir():
            print(f"manager: cloning {repo_url} (branch {branch}) from the control plane's mirror into {workdir}",
                  file=sys.stderr, flush=True)  # fmt: skip
            git.git("clone", "--quiet", "--shared", "--branch", branch, "--", mirror, str(workdir),
                    timeout=git.CLONE_TIMEOUT)  # fmt: skip
        # Its origin is the mirror: what it fetches comes from there; what it hands back goes
        # through `orch push`, which the control plane checks and pushes.
        git.git("remote", "set-url", "origin", mirror, cwd=workdir)
        (workspace / REPO_MARK).write_text(f"{repo_url} {branch}\n", encoding="utf-8")
    preseed_claude_config(home, workdir, endpoints.ticket if endpoints.api_key else None)
    return workdir


def open_relay_door(relay_socket: Path) -> str:
    """The manager has no network: its Claude Code reaches the control plane's relay through a
    door on its own loopback (control/door.py), a process of its own that outlives this one's
    exec. The relay's address for Claude Code."""
    listener = listen_tcp("127.0.0.1")
    port = listener.getsockname()[1]
    subprocess.Popen(
        [sys.executable, "-P", "-m", "orchestrator.control.door", "--fd", str(listener.fileno()), "--to",
         str(relay_socket)],
        pass_fds=(listener.fileno(),), start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    listener.close()
    return f"http://127.0.0.1:{port}"


def check_clone_of(workspace: Path, repo_url: str, branch: str) -> None:
    """The clone kept on the workspace volume must be of the repository and branch given: a
    manager of another repository would otherwise work, silently, in the first one's clone."""
    try:
        kept = (workspace / REPO_MARK).read_text(encoding="utf-8").split()
    except OSError:
        return
    if len(kept) == 2 and kept != [repo_url, branch]:
        raise UserError(
            f"the workspace holds a clone of {kept[0]} (branch {kept[1]}), not of {repo_url} (branch {branch}): "
            "give this orchestration another name (run.py --name) or workspace (--workspace-volume), or remove the "
            "volume"
        )


def wait_for(control: Path) -> Endpoints:
    """The control plane's endpoints, once it has written them."""
    deadline = time.monotonic() + ENDPOINTS_TIMEOUT
    while time.monotonic() < deadline:
        found = Endpoints.read(control)
        if found:
            return found
        time.sleep(0.2)
    raise UserError(f"the control plane did not say where it serves ({control / ENDPOINTS}) within "
                    f"{ENDPOINTS_TIMEOUT:.0f} s")  # fmt: skip


def prepare(env: dict[str, str]) -> Path:
    """Everything before the final exec; returns the folder to work in."""
    control = environment.CONTROL.get(env)
    if control:
        return prepare_without_secrets(env, Path(control))
    # The shared volume's files are for the group of the orchestrator's user, and no one else:
    # a worker's agent runs as a user outside it.
    os.umask(OrchestrationDir.UMASK)
    home = Path(env.get("HOME") or Path.home())
    workspace = Path(environment.WORKSPACE.require(env))
    load_secrets(home, env)
    scrub = scrubber(env_secrets(env))

    git.configure_identity(environment.GIT_USER_NAME.get(env), environment.GIT_USER_EMAIL.get(env))
    git.configure_credentials()
    git.prepare_ssh(home)
    ctx = Context.build(env)
    ctx.orch.ensure()
    try:
        check_daemon()
    except (DaemonUnreachable, DockerMissing) as exc:
        print(f"manager: warning: workers cannot be started: {exc}", file=sys.stderr)
    else:
        resume_batch(ctx)

    workdir = workspace
    repo_url = environment.REPO_URL.get(env)
    if repo_url:
        workdir = workspace / "repo"
        branch = environment.REPO_BRANCH.require(env)
        check_clone_of(workspace, repo_url, branch)
        if not (workdir / ".git").is_dir():
            print(f"manager: cloning {scrub(repo_url)} (branch {branch}) into {workdir}", file=sys.stderr, flush=True)
            git.clone(repo_url, branch, workdir, scrub=scrub, env=env)
        (workspace / REPO_MARK).write_text(f"{repo_url} {branch}\n", encoding="utf-8")
    preseed_claude_config(home, workdir)
    return workdir


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if args[:1] in (["-h"], ["--help"]):
        print(
            "usage: entrypoint [-- COMMAND...]\n\n"
            "Prepare the manager container, then run Claude Code with the Smart Manager prompt,\n"
            "or COMMAND instead when one is given."
        )
        return 0
    env = dict(os.environ)

    def work() -> int:
        workdir = prepare(env)
        os.chdir(workdir)
        command = args or manager_argv(environment.ANTHROPIC_MODEL.get(env), environment.FIRST_REQUEST.get(env))
        try:
            os.execvpe(command[0], command, env)
        except OSError as exc:
            raise UserError(f"cannot run {command[0]}: {exc.strerror}") from None
        return 0  # not reached

    return run_command("manager", work)


if __name__ == "__main__":
    sys.exit(main())
