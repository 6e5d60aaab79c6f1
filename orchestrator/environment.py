"""Every environment variable that the host side, the manager and the workers hand to each
other, with its default: the one place that names them.

None of them holds a secret. Secrets travel as files copied into containers through the
Docker API (see secrets.py), never in a container's environment, where ``docker inspect``
and every process of the same user could read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .config import CONTAINER_ORCHESTRATION_DIR
from .errors import InvalidInput


@dataclass(frozen=True)
class Var:
    name: str
    default: str | None = None

    def get(self, env: Mapping[str, str]) -> str | None:
        """The value in ``env``, else the default; an empty value counts as unset."""
        return env.get(self.name) or self.default

    def require(self, env: Mapping[str, str]) -> str:
        value = self.get(env)
        if value is None:
            raise InvalidInput(f"{self.name} is not set")
        return value

    def whole_number(self, env: Mapping[str, str], *, least: int = 1) -> int:
        """The value as a whole number of at least ``least``; one message for every variable."""
        text = self.require(env)
        if not text.isdigit() or int(text) < least:
            kind = "a positive whole number" if least == 1 else f"a whole number of {least} or more"
            raise InvalidInput(f"{self.name} must be {kind}, not {text!r}")
        return int(text)


DEFAULT_MODEL = "claude-opus-4-5-20251101"

# --- The repository and the agents: set by run.py in the manager, passed on to every worker.
REPO_URL = Var("REPO_URL")
REPO_BRANCH = Var("REPO_BRANCH", "main")
ANTHROPIC_MODEL = Var("ANTHROPIC_MODEL", DEFAULT_MODEL)
# Where the Claude API is: Anthropic's own, or an LLM gateway or company proxy.
ANTHROPIC_BASE_URL = Var("ANTHROPIC_BASE_URL")
GIT_USER_NAME = Var("GIT_USER_NAME", "Claude Orchestrator")
GIT_USER_EMAIL = Var("GIT_USER_EMAIL", "orchestrator@localhost")
GIT_TOKEN_USER = Var("GIT_TOKEN_USER", "x-access-token")  # sent with the git token; GitLab wants oauth2
BRANCH_PREFIX = Var("ORCHESTRATOR_BRANCH_PREFIX", "orchestrator/")

# --- Where containers go: run.py's options, kept in the manager for spawn-worker and orch.
VOLUME = Var("ORCHESTRATOR_VOLUME", "orchestration-volume")
NETWORK = Var("ORCHESTRATOR_NETWORK")
IMAGE_PREFIX = Var("ORCHESTRATOR_IMAGE_PREFIX", "claude-")
# What runs the workers: "docker" (containers on this engine) or "swarm" (jobs of a swarm).
ENGINE = Var("ORCHESTRATOR_ENGINE", "docker")
MAX_WORKERS = Var("ORCHESTRATOR_MAX_WORKERS", "4")
# How often a task whose worker was stopped from outside (an engine restart, a reboot) is queued
# again by itself, from what it had handed back.
RESUME_INTERRUPTED = Var("ORCHESTRATOR_RESUME_INTERRUPTED", "1")
# What one worker may use (docker run --memory, --cpus, --pids-limit).
WORKER_MEMORY = Var("ORCHESTRATOR_WORKER_MEMORY", "4g")
WORKER_CPUS = Var("ORCHESTRATOR_WORKER_CPUS", "2")
WORKER_PIDS = Var("ORCHESTRATOR_WORKER_PIDS", "1024")
# What one worker may write (see limits.py): a size, or "none" for no bound.
WORKER_DISK = Var("ORCHESTRATOR_WORKER_DISK", "10g")
# Whether the engine's storage driver bounds a container's writable layer (--storage-opt size=);
# run.py finds out and tells the manager ("yes" or "no"; unset: spawn-worker asks the engine).
STORAGE_QUOTA = Var("ORCHESTRATOR_STORAGE_QUOTA")
# Seconds a stopped worker gets to commit and push before Docker kills it.
STOP_TIMEOUT = Var("ORCHESTRATOR_STOP_TIMEOUT", "120")
# Seconds a worker keeps trying a push while the git server cannot be reached, before it saves
# the work in a bundle instead.
PUSH_RETRY_SECONDS = Var("ORCHESTRATOR_PUSH_RETRY_SECONDS", "180")
# "no": run.py was told --no-login-check, and that holds for the whole batch (orch start of a new
# batch checks the login otherwise).
LOGIN_CHECK = Var("ORCHESTRATOR_LOGIN_CHECK", "yes")

# --- The control plane and the manager.
# Where the control plane serves the manager (the channel, the filtered Docker API, endpoints.json);
# set in the manager, where orch and spawn-worker forward their work there.
CONTROL = Var("ORCHESTRATOR_CONTROL")
# The control plane's mirror of origin, which the manager (and the workers) read.
MIRROR_DIR = Var("ORCHESTRATOR_MIRROR_DIR", "/mirror")
# In the control plane: the volume that holds its mirror, which its workers mount read-only to
# clone from (their clones fetch from origin only what the mirror lacks).
MIRROR_VOLUME = Var("ORCHESTRATOR_MIRROR_VOLUME")
# In the control plane: the volume of the folder it serves its workers from (the relay and the git
# channel), which they mount read-only; a worker started with it holds no credential.
DOORS_VOLUME = Var("ORCHESTRATOR_DOORS_VOLUME")
# In the control plane: the folder of the key its workers' tickets are made with (on a volume of
# the orchestration's own, so that a control plane made anew, by another manager too, takes it;
# default: its workspace).
KEYS_DIR = Var("ORCHESTRATOR_KEYS_DIR")
# In such a worker: where that folder is, and its task's tickets (tickets.py: good for this task's
# attempt only, and only there; not credentials).
DOORS_DIR = Var("ORCHESTRATOR_DOORS_DIR")
RELAY_TICKET = Var("ORCHESTRATOR_RELAY_TICKET")
GIT_TICKET = Var("ORCHESTRATOR_GIT_TICKET")
EGRESS_TICKET = Var("ORCHESTRATOR_EGRESS_TICKET")  # the agent's, in its proxy URL
CREDENTIAL_KIND = Var("ORCHESTRATOR_CREDENTIAL_KIND")  # "api-key" or "oauth": where the agent puts its ticket
# In the control plane: what the batch's agents may spend together, in USD (run.py --budget-usd);
# orch start --budget-usd sets the batch's own.
BUDGET_USD = Var("ORCHESTRATOR_BUDGET_USD")
# In the control plane: at most this many requests of the whole batch in flight to the API at
# once (run.py --api-in-flight); the API's rate limits lower it for a while.
API_IN_FLIGHT = Var("ORCHESTRATOR_API_IN_FLIGHT", "8")
# The orchestration's egress policy for its workers (run.py --egress, --allow-host; egress_choice.py).
EGRESS = Var("ORCHESTRATOR_EGRESS")
ALLOW_HOSTS = Var("ORCHESTRATOR_ALLOW_HOSTS")  # HOST[:PORT] patterns, separated by spaces
# A rehearsal (run.py --rehearsal): "sample" (the built-in script) or "script" (the person's, copied
# into the control plane's home). The control plane serves a scripted model in place of the API, and
# origin is a repository of its own: the sample app, or a copy of REHEARSAL_SOURCE. Workers say
# so in their results.
REHEARSAL = Var("ORCHESTRATOR_REHEARSAL")
REHEARSAL_SOURCE = Var("ORCHESTRATOR_REHEARSAL_SOURCE")  # the person's --repo, copied, never pushed to
# In a swarm batch's control plane: its address on the workers' network (control/swarm_doors.py),
# which its jobs are given as their name server (--dns): it answers NXDOMAIN to every name.
SWARM_CONTROL_ADDRESS = Var("ORCHESTRATOR_SWARM_CONTROL_ADDRESS")
# In the manager: the request its Claude Code starts on (a rehearsal's script names one).
FIRST_REQUEST = Var("ORCHESTRATOR_FIRST_REQUEST")
# In the control plane: the manager's workspace, read-only, where `orch push` finds its hand-over.
MANAGER_WORKSPACE = Var("ORCHESTRATOR_MANAGER_WORKSPACE")
# On the host: run.py's --dashboard-port ("auto", a port, or "off"). In the control plane: the port
# it serves the board on, which run.py publishes on the host's loopback (unset: no board).
DASHBOARD_PORT = Var("ORCHESTRATOR_DASHBOARD_PORT")
# In the control plane: its own container's name, which it names to the person (docker exec NAME ...).
CONTROL_NAME = Var("ORCHESTRATOR_CONTROL_NAME")

# --- Host only.
CA_CERTS = Var("ORCHESTRATOR_CA_CERTS")  # extra CA certificates for the image builds, separated by ':'

# --- Inside the containers.
ORCHESTRATION_DIR = Var("ORCHESTRATION_DIR", CONTAINER_ORCHESTRATION_DIR)  # where the shared volume is mounted
WORKSPACE = Var("WORKSPACE", "/workspace")

# --- Set for one worker by spawn-worker or the dispatcher.
TASK_ID = Var("TASK_ID")
WORKER_TYPE = Var("WORKER_TYPE")
TASK_TIMEOUT = Var("TASK_TIMEOUT")  # seconds; overrides the task's own
TASK_ATTEMPT = Var("TASK_ATTEMPT", "1")

# Settings run.py passes into the manager, and the manager into every worker it starts.
MANAGER_SETTINGS = (
    REPO_URL,
    REPO_BRANCH,
    ANTHROPIC_MODEL,
    ANTHROPIC_BASE_URL,
    GIT_USER_NAME,
    GIT_USER_EMAIL,
    GIT_TOKEN_USER,
    BRANCH_PREFIX,
    VOLUME,
    NETWORK,
    IMAGE_PREFIX,
    ENGINE,
    WORKER_MEMORY,
    WORKER_CPUS,
    WORKER_PIDS,
    WORKER_DISK,
    STORAGE_QUOTA,
    STOP_TIMEOUT,
    PUSH_RETRY_SECONDS,
    LOGIN_CHECK,
    BUDGET_USD,
    API_IN_FLIGHT,
    EGRESS,
    ALLOW_HOSTS,
    REHEARSAL,
    REHEARSAL_SOURCE,
    FIRST_REQUEST,
)

# --- Inside a worker, for tests and images of other layouts.
AGENT_USER = Var("ORCHESTRATOR_AGENT_USER", "agent")  # the user the agent runs as
AGENT_CLI = Var("ORCHESTRATOR_AGENT_CLI", "claude")  # which agent CLI runs the task (agents.py)
RUNTIME_DIR = Var("ORCHESTRATOR_RUNTIME_DIR", "/var/lib/orchestrator")  # the runtime's own folder

ALL = (
    *MANAGER_SETTINGS,
    CONTROL,
    MIRROR_DIR,
    MIRROR_VOLUME,
    DOORS_VOLUME,
    KEYS_DIR,
    DOORS_DIR,
    RELAY_TICKET,
    GIT_TICKET,
    EGRESS_TICKET,
    CREDENTIAL_KIND,
    MANAGER_WORKSPACE,
    SWARM_CONTROL_ADDRESS,
    DASHBOARD_PORT,
    CONTROL_NAME,
    MAX_WORKERS,
    RESUME_INTERRUPTED,
    CA_CERTS,
    ORCHESTRATION_DIR,
    WORKSPACE,
    TASK_ID,
    WORKER_TYPE,
    TASK_TIMEOUT,
    TASK_ATTEMPT,
    AGENT_USER,
    AGENT_CLI,
    RUNTIME_DIR,
)
