"""The one context each command's ``main`` builds (pipx's DispatchContext): the settings read from
the environment once and checked, the shared volume, and the engine. Code below ``main`` takes
what it needs from here and never reads or writes ``os.environ`` to carry a parameter; a child
process (the dispatcher) is given an environment made from the context (``child_env``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import config, environment
from .engine import Engine, engine_for
from .errors import InvalidInput
from .limits import WorkerLimits
from .store import OrchestrationDir


@dataclass(frozen=True)
class Settings:
    """Every setting the host, the manager and the control plane hand to each other (environment.py
    names them), read once."""

    volume: str
    engine: str
    orchestration_dir: Path
    workspace: Path
    repo_url: str | None
    branch: str
    model: str
    api_url: str | None
    branch_prefix: str
    network: str | None
    image_prefix: str
    worker_limits: WorkerLimits
    stop_timeout: int
    max_workers: int
    resume_interrupted: int
    storage_quota: bool | None  # None: not known, asked of the engine when it matters
    login_check: bool = True  # False: run.py was told --no-login-check

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        engine: str | None = None,
        volume: str | None = None,
        orchestration_dir: str | Path | None = None,
    ) -> Settings:
        """The settings in ``env``, with the command line's choices (the given ones) in their place."""
        kind = engine or environment.ENGINE.require(env)
        if kind not in config.ENGINES:
            raise InvalidInput(f"{environment.ENGINE.name} must be one of {', '.join(config.ENGINES)}, not {kind!r}")
        quota = environment.STORAGE_QUOTA.get(env)
        return cls(
            volume=volume or environment.VOLUME.require(env),
            engine=kind,
            orchestration_dir=Path(orchestration_dir or environment.ORCHESTRATION_DIR.require(env)),
            workspace=Path(environment.WORKSPACE.require(env)),
            repo_url=environment.REPO_URL.get(env),
            branch=environment.REPO_BRANCH.require(env),
            model=environment.ANTHROPIC_MODEL.require(env),
            api_url=environment.ANTHROPIC_BASE_URL.get(env),
            branch_prefix=environment.BRANCH_PREFIX.require(env),
            network=environment.NETWORK.get(env),
            image_prefix=environment.IMAGE_PREFIX.require(env),
            worker_limits=WorkerLimits.from_env(env),
            stop_timeout=environment.STOP_TIMEOUT.whole_number(env),
            max_workers=environment.MAX_WORKERS.whole_number(env),
            resume_interrupted=environment.RESUME_INTERRUPTED.whole_number(env, least=0),
            storage_quota=None if quota not in ("yes", "no") else quota == "yes",
            login_check=environment.LOGIN_CHECK.require(env) != "no",
        )


@dataclass(frozen=True)
class Context:
    """What a command works with."""

    settings: Settings
    orch: OrchestrationDir
    engine: Engine
    # The process's environment, for what it holds beyond the settings (the manager's processes
    # get the credentials there) and for the processes it starts.
    env: Mapping[str, str] = field(repr=False)

    @classmethod
    def build(
        cls,
        env: Mapping[str, str],
        *,
        engine: str | None = None,
        volume: str | None = None,
        orchestration_dir: str | Path | None = None,
    ) -> Context:
        settings = Settings.from_env(env, engine=engine, volume=volume, orchestration_dir=orchestration_dir)
        return cls(
            settings=settings,
            orch=OrchestrationDir(settings.orchestration_dir, rehearsal=bool(environment.REHEARSAL.get(env))),
            engine=engine_for(settings.engine, settings.volume),
            env=dict(env),
        )

    def child_env(self) -> dict[str, str]:
        """The environment of a process this one starts (the dispatcher): this one's, with the
        choices of its command line in place of what the environment said."""
        return {
            **self.env,
            environment.ENGINE.name: self.settings.engine,
            environment.VOLUME.name: self.settings.volume,
            environment.ORCHESTRATION_DIR.name: str(self.orch.root),
        }
