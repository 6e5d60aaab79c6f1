#!/usr/bin/env python3
"""The orchestrator against plain Docker, side by side, on the local engine.

    python3 bench/bench.py            the full run (about ten minutes on two cores)
    python3 bench/bench.py --smoke    every comparison, tiny: checks that the benchmark works

It starts what it needs (the images, a scripted Claude API and a git server on 127.0.0.1, managers
with volumes of their own), runs each comparison, prints the table, and removes its containers and
volumes. See bench/README.md for what each row measures and why.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import config, images, spawn  # noqa: E402
from orchestrator.limits import WorkerLimits  # noqa: E402
from tests.support.git_servers import seed_repo, start_git_daemon  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.scripted_api import ScriptedAPI, bash, slow, text  # noqa: E402

INSIDE = Path(__file__).with_name("inside.py")


@dataclass(frozen=True)
class Sizes:
    """How much of each comparison a run does."""

    spawn_reps: int
    tasks: int  # the throughput comparison: this many one-second tasks ...
    parallel: int  # ... this many at a time
    at_once: int  # tasks started with --max-workers at_once
    history: int  # finished tasks on the volume for status and wait
    waited: int  # running tasks orch wait waits for
    wait_seconds: int  # how long each of them runs
    hold_seconds: int  # how long each of the at_once tasks runs
    rounds: int  # of the throughput comparison, each side
    clone_mb: int  # the clone comparison: a repository with this many MB of history ...
    clone_workers: int  # ... cloned by this many workers at once
    limited_tasks: int  # the rate-limit comparison: this many tasks at once ...
    capacity: int  # ... against an API that answers this many at once (429 beyond) ...
    answer_seconds: float  # ... each answer taking this long
    streams: int  # the relay's overhead: this many streams at once


FULL = Sizes(spawn_reps=15, tasks=40, parallel=8, at_once=50, history=10_000, waited=4, wait_seconds=30,
             hold_seconds=60, rounds=2, clone_mb=200, clone_workers=20, limited_tasks=20, capacity=4,
             answer_seconds=8.0, streams=50)  # fmt: skip
SMOKE = Sizes(spawn_reps=2, tasks=4, parallel=2, at_once=3, history=50, waited=2, wait_seconds=3, hold_seconds=5,
              rounds=1, clone_mb=2, clone_workers=2, limited_tasks=3, capacity=1, answer_seconds=1.0,
              streams=5)  # fmt: skip


def run(
    *argv: str,
    input: bytes | None = None,
    timeout: float = 600,
    check: bool = True,
    env: dict | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(argv, input=input, capture_output=True, timeout=timeout, env=env, cwd=cwd, check=False)
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(argv[:6])} ... failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return proc


@dataclass
class Row:
    what: str
    plain: str
    ours: str
    ratio: str
    target: str
    met: bool | None  # None: nothing to compare (a smoke run)


@dataclass
class Bench:
    sizes: Sizes
    prefix: str
    image_prefix: str
    smoke: bool
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="orch-bench-")))
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    rows: list[Row] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    managers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    api: ScriptedAPI | None = None
    repo_url: str = ""

    # --- Set-up.

    def name(self, what: str) -> str:
        return f"{self.prefix}{self.run_id}-{what}"

    @property
    def token_file(self) -> Path:
        return self.tmp / "claude-token"

    def start_services(self) -> None:
        self.token_file.write_text(f"sk-ant-oat01-bench{uuid.uuid4().hex}\n")
        self.token_file.chmod(0o600)
        self.api = ScriptedAPI().start()
        self.api.script("bench-sleep-1", bash("sleep 1"), text("done"))
        # Claude Code refuses a plain `sleep N` past a few seconds ("Blocked: standalone sleep").
        self.api.script("bench-long", bash(pause(self.sizes.wait_seconds)), text("done"))
        self.api.script("bench-hold", bash(pause(self.sizes.hold_seconds)), text("done"))
        self.api.script("bench-idle", text("done"))
        base = self.tmp / "git"
        base.mkdir()
        seed = seed_repo(self.tmp / "seed")
        run("git", "clone", "-q", "--bare", str(seed), str(base / "app.git"))
        port = free_port()
        self.repo_url = f"git://127.0.0.1:{port}/app.git"
        self.git_daemon = start_git_daemon(base, port, self.repo_url, receive_pack=False)

    @property
    def host_env(self) -> dict[str, str]:
        """The environment of the commands the benchmark runs on the host: no key or token of the
        person running it."""
        return {"PATH": os.environ["PATH"], "HOME": str(self.tmp), "LANG": "C.UTF-8"}

    def start_manager(
        self, what: str, repo_url: str | None = None, api_url: str | None = None, options: Sequence[str] = ()
    ) -> Manager:
        assert self.api is not None
        name, volume = self.name(f"manager-{what}"), self.name(f"volume-{what}")
        self.volumes.append(volume)
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "bin" / "run.py"), "--image-prefix", self.image_prefix,
             "--network", "host", "--api-url", api_url or self.api.url, "--repo", repo_url or self.repo_url,
             "--token", str(self.token_file), "--volume", volume, "--name", name, "--no-login-check",
             *options, "--", "sleep", "infinity"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.host_env,
        )  # fmt: skip
        self.managers.append(process)
        ready = (
            'for f in /proc/[0-9]*/cmdline; do [ "$(tr "\\0" " " < "$f")" = "sleep infinity " ] && exit 0; done; exit 1'
        )
        deadline = time.monotonic() + 180
        while run("docker", "exec", name, "sh", "-c", ready, check=False).returncode:
            if process.poll() is not None:
                raise RuntimeError(f"the manager {name} exited: {process.stdout.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the manager {name} did not start")
            time.sleep(0.3)
        return Manager(name, volume)

    def discard(self, *volumes: str) -> None:
        """Remove what a comparison left: the containers of its volumes (workers, helper, manager),
        and the volumes, so that the next one has the machine to itself."""
        names: list[str] = []
        for volume in volumes:
            names += run("docker", "ps", "-aq", "--filter", f"label=orchestrator.volume={volume}",
                         check=False).stdout.decode().split()  # fmt: skip
            manager = volume.replace("-volume-", "-manager-")
            for name in (manager, f"{manager}-control"):
                names += run("docker", "ps", "-aq", "--filter", f"name=^{name}$", check=False).stdout.decode().split()
        if names:
            run("docker", "rm", "--force", *names, check=False, timeout=300)
        for volume in volumes:
            # The manager's and its control plane's volumes too (run.py keeps them for the next
            # manager of that name), and their network.
            manager = volume.replace("-volume-", "-manager-")
            kept = [f"{manager}-{what}" for what in ("workspace", "mirror", "run", "control-workspace")]
            kept += [f"{volume}-doors", f"{volume}-keys"]  # the shared volume's own
            run("docker", "volume", "rm", "--force", volume, *kept, check=False)
            run("docker", "network", "rm", f"{manager}-net", check=False)

    def cleanup(self) -> None:
        names: list[str] = []
        for volume in self.volumes:
            names += run("docker", "ps", "-aq", "--filter", f"label=orchestrator.volume={volume}",
                         check=False).stdout.decode().split()  # fmt: skip
        names += run("docker", "ps", "-aq", "--filter", f"name={self.prefix}{self.run_id}-",
                     check=False).stdout.decode().split()  # fmt: skip
        if names:
            run("docker", "rm", "--force", *names, check=False, timeout=300)
        for process in self.managers:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        workspaces = run("docker", "volume", "ls", "-q", "--filter", f"name=^{self.prefix}{self.run_id}-",
                         check=False).stdout.decode().split()  # fmt: skip
        for volume in [*self.volumes, *workspaces]:
            run("docker", "volume", "rm", "--force", volume, check=False)
        networks = run("docker", "network", "ls", "-q", "--filter", f"name=^{self.prefix}{self.run_id}-",
                       check=False).stdout.decode().split()  # fmt: skip
        if networks:
            run("docker", "network", "rm", *networks, check=False)
        if getattr(self, "git_daemon", None) is not None:
            self.git_daemon.terminate()
            self.git_daemon.wait(10)
        if self.api is not None:
            self.api.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- Helpers.

    def worker_spec(self, task_id: str, volume: str) -> spawn.WorkerSpec:
        """A worker as spawn-worker on the host makes it, for plain docker's side."""
        assert self.api is not None
        return spawn.worker_spec(
            "flutter", task_id, env={"CLAUDE_CODE_OAUTH_TOKEN": "unused"}, repo=self.repo_url, branch="main",
            model="claude-sonnet-4-5", api_url=self.api.url, volume=volume, network="host",
            image_prefix=self.image_prefix, limits=WorkerLimits.from_env({}),
        )  # fmt: skip

    def running_workers(self, volume: str) -> int:
        proc = run("docker", "ps", "-q", "--filter", f"label=orchestrator.volume={volume}", "--filter",
                   "label=orchestrator.role=worker",
                   "--filter", "status=running", check=False)  # fmt: skip
        return len(proc.stdout.split())

    def wait_until_running(self, manager: Manager, ids: Sequence[str], timeout: float = 600) -> int:
        """Until every task runs, or none is queued or starting any more; returns how many run."""
        deadline = time.monotonic() + timeout
        while True:
            states = manager.inside("states", *ids)
            if all(state == "running" for state in states.values()) or not any(
                state in ("queued", "starting") for state in states.values()
            ):
                return sum(state == "running" for state in states.values())
            if time.monotonic() > deadline:
                raise RuntimeError(f"tasks not running after {timeout} s: {states}")
            time.sleep(0.5)

    def add(self, what: str, plain: str, ours: str, ratio: float | None, target: str, ok: bool | None) -> None:
        """A row of the table; ``ok`` None: nothing to judge (a smoke run, a figure for reference)."""
        self.rows.append(Row(what, plain, ours, f"{ratio:.2f}x" if ratio is not None else "", target,
                             None if self.smoke else ok))  # fmt: skip
        print(f"  {what}: {plain} | {ours} | {self.rows[-1].ratio}", flush=True)

    # --- The comparisons.

    def spawn(self) -> None:
        manager = self.start_manager("spawn")
        try:
            self.spawn_in_manager(manager)
            self.spawn_on_host(manager)
        finally:
            self.discard(manager.volume)

    def spawn_in_manager(self, manager: Manager) -> None:
        times = manager.inside("spawn", str(self.sizes.spawn_reps), self.run_id, timeout=1200)
        ratio = times["spawn"] / times["plain"]
        self.add("spawn-worker in the control plane vs docker run -d there (median)", f"{times['plain'] * 1000:.0f} ms",
                 f"{times['spawn'] * 1000:.0f} ms", ratio, "for reference", None)  # fmt: skip
        ratio = times["spawn"] / times["floor"]
        self.add("  the same, vs docker create + docker cp (the token) + docker start there",
                 f"{times['floor'] * 1000:.0f} ms", f"{times['spawn'] * 1000:.0f} ms", ratio, "for reference",
                 None)  # fmt: skip
        ratio = times["dispatcher"] / times["plain"]
        self.add("a spawn from the control plane's running dispatcher vs docker run -d there (median)",
                 f"{times['plain'] * 1000:.0f} ms", f"{times['dispatcher'] * 1000:.0f} ms", ratio, "<= 1.10x",
                 ratio <= 1.10)  # fmt: skip
        ratio = times["channel"] / times["plain"]
        self.add("spawn-worker through the control plane's channel, as the manager runs it, vs docker run -d there "
                 "(median, same rounds)", f"{times['plain'] * 1000:.0f} ms", f"{times['channel'] * 1000:.0f} ms",
                 ratio, "<= 1.25x", ratio <= 1.25)  # fmt: skip
        # The manager's own spawn-worker: its request goes over the channel, the control plane checks
        # it and spawns. Its tasks are made by the control plane first; the plain figure is the one
        # just measured there.
        manager.inside("tasks", f"{self.run_id}-manager", str(self.sizes.spawn_reps + 1), "[bench-idle] Nothing.")
        channel = manager.in_manager("spawn-channel", str(self.sizes.spawn_reps), f"{self.run_id}-manager",
                                     timeout=1200)["spawn"]  # fmt: skip
        run("docker", "rm", "--force", *[f"worker-{self.run_id}-manager-{n}" for n in range(1, self.sizes.spawn_reps
            + 2)], check=False)  # fmt: skip
        ratio = channel / times["plain"]
        self.add("  the same in the manager itself, in rounds of its own, its workers running meanwhile (median)",
                 f"{times['plain'] * 1000:.0f} ms", f"{channel * 1000:.0f} ms", ratio, "for reference",
                 None)  # fmt: skip

    def spawn_on_host(self, manager: Manager) -> None:
        assert self.api is not None
        api_url = self.api.url
        not_mounted = self.tmp / "not-mounted"  # the volume is not mounted on the host: the host's way
        for n in range(self.sizes.spawn_reps + 1):
            for side in ("spawn", "plain"):
                run("docker", "exec", manager.name, "orch", "submit", "--id", f"{self.run_id}-host-{side}-{n}",
                    "--prompt", "[bench-idle] Nothing to do.")  # fmt: skip

        def spawn_worker(n: int) -> float:
            t0 = time.perf_counter()
            run(sys.executable, str(ROOT / "bin" / "spawn-worker.py"), "flutter", f"{self.run_id}-host-spawn-{n}",
                "--volume", manager.volume, "--image-prefix", self.image_prefix, "--network", "host",
                "--repo", self.repo_url, "--token", str(self.token_file), "--api-url", api_url,
                "--orchestration-dir", str(not_mounted), env=self.host_env)  # fmt: skip
            return time.perf_counter() - t0

        def docker_run(n: int) -> float:
            spec = self.worker_spec(f"{self.run_id}-host-plain-{n}", manager.volume)
            env = {**self.host_env, **spec.environment()}
            t0 = time.perf_counter()
            run("docker", "run", "--detach", *spec.create_argv()[1:], env=env)
            return time.perf_counter() - t0

        def remove(n: int) -> None:
            run(
                "docker",
                "rm",
                "--force",
                f"worker-{self.run_id}-host-spawn-{n}",
                f"worker-{self.run_id}-host-plain-{n}",
                check=False,
            )

        spawn_s, plain_s = alternate(self.sizes.spawn_reps, spawn_worker, docker_run, remove)
        self.add("bin/spawn-worker.py on the host vs docker run -d (median)", f"{plain_s * 1000:.0f} ms",
                 f"{spawn_s * 1000:.0f} ms", spawn_s / plain_s, "<= 1.10x", spawn_s / plain_s <= 1.10)  # fmt: skip

    def throughput(self) -> None:
        """The same tasks through orch and through xargs, in turns (plain, orch, orch, plain ...): the
        machine's drift over the run falls on both sides alike."""
        sizes = self.sizes
        count, parallel = sizes.tasks, sizes.parallel
        manager = self.start_manager("throughput")
        times: dict[str, list[float]] = {"plain": [], "ours": []}
        try:
            for turn in range(sizes.rounds):
                for side in ("plain", "ours") if turn % 2 == 0 else ("ours", "plain"):
                    prefix = f"{self.run_id}-{side[0]}{turn}"
                    if side == "plain":
                        times[side].append(self.xargs_run(prefix, count, parallel))
                        continue
                    manager.inside("tasks", prefix, str(count), "[bench-sleep-1] Sleep for a second.")
                    t0 = time.monotonic()
                    manager.orch("start", "--all", "--max-workers", str(parallel))
                    waited = manager.orch("wait", "--all", check=False)
                    times[side].append(time.monotonic() - t0)
                    if waited.returncode:
                        raise RuntimeError(f"orch wait: {waited.stdout.decode()[-1500:]}")
        finally:
            self.discard(manager.volume)
        plain, ours = sum(times["plain"]), sum(times["ours"])
        each = f" ({len(times['ours'])} runs each)" if len(times["ours"]) > 1 else ""
        self.add(f"{count} one-second tasks, {parallel} at a time: orch start + wait vs xargs -P {parallel} docker "
                 f"run{each}", "/".join(f"{t:.1f}" for t in times["plain"]) + " s",
                 "/".join(f"{t:.1f}" for t in times["ours"]) + " s", ours / plain, "<= 1.20x",
                 ours / plain <= 1.20)  # fmt: skip

    def xargs_run(self, prefix: str, count: int, parallel: int) -> float:
        """Plain docker: the same worker image and task, `docker run --rm` through xargs. The token reaches
        each worker the one way plain docker has: a folder of the host bind-mounted as the runtime's home."""
        volume = self.name(f"volume-xargs-{prefix}")
        self.volumes.append(volume)
        ids = [f"{prefix}-{n}" for n in range(1, count + 1)]
        tasks = {t: {"id": t, "prompt": "[bench-sleep-1] Sleep for a second."} for t in ids}
        script = (
            "import json, os, sys\nos.umask(0o007)\n"
            "for t, task in json.loads(sys.stdin.read()).items():\n"
            "    open(f'/orchestration/tasks/{t}.json', 'w').write(json.dumps(task))\n"
        )
        run("docker", "run", "--rm", "-i", "--network", "none", "--volume", f"{volume}:/orchestration",
            "--entrypoint", "python3", f"{self.image_prefix}flutter", "-c", script,
            input=json.dumps(tasks).encode())  # fmt: skip
        homes = self.tmp / f"homes-{prefix}"
        for task_id in ids:
            home = homes / task_id
            home.mkdir(parents=True, mode=0o700)
            shutil.copyfile(self.token_file, home / ".claude-token")
            (home / ".claude-token").chmod(0o600)
        spec = self.worker_spec("the-task-id", volume)
        # The same options as spawn-worker's, but no name (--rm, a new container each time), and the
        # task id on the command line, where xargs puts it.
        flags = [arg.replace("the-task-id", "{}") for arg in spec.create_argv()[1:-1]]
        flags = without(without(flags, "--name", "worker-{}"), "--env", "TASK_ID")
        if os.getuid() != 0:
            flags += ["--cap-add", "DAC_OVERRIDE"]  # to read a home that belongs to another user than root
        argv = ["xargs", "-P", str(parallel), "-I", "{}", "docker", "run", "--rm", *flags, "--env", "TASK_ID={}",
                "--volume", f"{homes}/{{}}:/root", spec.image]  # fmt: skip
        env = {**self.host_env, **spec.environment()}
        t0 = time.monotonic()
        proc = run(*argv, input="\n".join(ids).encode() + b"\n", env=env, check=False, timeout=1800)
        elapsed = time.monotonic() - t0
        self.discard(volume)
        if proc.returncode:
            raise RuntimeError(f"xargs docker run failed ({proc.returncode}): {proc.stderr.decode()[-1500:]}")
        return elapsed

    def at_once_and_wait(self) -> None:
        """--max-workers N with N tasks: how many run at once, how soon; then orch wait on them all."""
        n = self.sizes.at_once
        manager = self.start_manager("at-once")
        try:
            self._at_once(manager, n)
        finally:
            self.discard(manager.volume)

    def _at_once(self, manager: Manager, n: int) -> None:
        ids = manager.inside("tasks", f"{self.run_id}-a", str(n), "[bench-hold] Wait a while.")["ids"]
        t0 = time.monotonic()
        manager.orch("start", "--all", "--max-workers", str(n))
        most, reached = 0, None
        while time.monotonic() - t0 < 300:
            now = self.running_workers(manager.volume)
            if now > most:
                most = now
            if most >= n:
                reached = time.monotonic() - t0
                break
            time.sleep(0.2)
        when = f" after {reached:.1f} s" if reached is not None else " (not all within 300 s)"
        self.add(f"{n} tasks with --max-workers {n}: most running at once", "-", f"{most}{when}", None,
                 f"{n}, within seconds", most >= n and reached is not None and reached < 30)  # fmt: skip
        self.wait_cpu(manager, ids, f"orch wait on {n} running tasks", limit=1.0)

    def wait_cpu(self, manager: Manager, ids: list[str], what: str, limit: float, *options: str) -> None:
        running = self.wait_until_running(manager, ids)
        if running < len(ids):
            what += f" ({len(ids) - running} of them over before it began)"
        timed = manager.inside("timed", "orch", "wait", *(options or ids), timeout=1800)
        # Exit 1 is a task that did not succeed: the history has some.
        if timed["rc"] and not (timed["rc"] == 1 and "--all" in options and " tasks: " in timed["stdout_tail"]):
            raise RuntimeError(f"{what}: orch wait failed: {timed['stdout_tail']} {timed['stderr']}")
        share = 100 * timed["cpu"] / timed["wall"]
        self.add(f"{what}: CPU of orch wait", "-", f"{share:.2f}% of a core ({timed['cpu']:.2f} s in "
                 f"{timed['wall']:.0f} s)", None, f"< {limit:g}%", share < limit)  # fmt: skip

    def clone(self) -> None:
        """N workers of one batch on a repository of real size: what the batch reads from origin, and
        when every workspace is ready (its agent's first request), against one plain `git clone`."""
        n, size = self.sizes.clone_workers, self.sizes.clone_mb
        base = self.tmp / "git"
        make_history(base / "big.git", self.tmp / "big-work", size)
        proxy = CountingProxy(int(self.repo_url.rsplit(":", 1)[1].split("/")[0]))
        url = f"git://127.0.0.1:{proxy.port}/big.git"
        t0 = time.monotonic()
        run("git", "clone", "--quiet", url, str(self.tmp / "one-clone"), env=self.host_env, timeout=1800)
        one_time, one_bytes = time.monotonic() - t0, proxy.take()
        shutil.rmtree(self.tmp / "one-clone")
        assert self.api is not None
        for k in range(1, n + 1):
            self.api.script(f"bench-clone-{k}", text("done"))
        manager = self.start_manager("clone", repo_url=url)  # its control plane fetches the mirror: counted
        try:
            ids = manager.inside("tasks-numbered", f"{self.run_id}-c", str(n), "bench-clone")["ids"]
            started = time.time()  # the engine's log timestamps are wall-clock times
            manager.orch("start", "--all", "--max-workers", str(n))
            manager.inside("timed", "orch", "wait", *ids, timeout=3600)
            batch_bytes = proxy.take()
            # A workspace is ready when its runtime starts the agent: the worker's log says so.
            ready = max(agent_started(config.container_name(task_id)) for task_id in ids) - started
        finally:
            proxy.close()
            self.discard(manager.volume)
        mb = 1024 * 1024
        self.add(f"{n} workers on {size} MB of history: bytes read from origin vs one git clone",
                 f"{one_bytes / mb:.1f} MB", f"{batch_bytes / mb:.1f} MB", batch_bytes / one_bytes, "<= 1.10x",
                 batch_bytes <= 1.10 * one_bytes)  # fmt: skip
        self.add(f"{n} workers on {size} MB of history: every workspace ready vs one git clone",
                 f"{one_time:.1f} s", f"{ready:.1f} s", ready / one_time, "<= 2x", ready <= 2 * one_time)  # fmt: skip

    def wait_fresh(self) -> None:
        manager = self.start_manager("wait")
        try:
            ids = manager.inside("tasks", f"{self.run_id}-w", str(self.sizes.waited), "[bench-long] Wait.")["ids"]
            manager.orch("start", *ids)
            self.wait_cpu(manager, ids, f"fresh volume: orch wait on {len(ids)} running tasks", 1.0)
        finally:
            self.discard(manager.volume)

    def history(self) -> None:
        manager = self.start_manager("history")
        try:
            self._history(manager, self.sizes.history)
        finally:
            self.discard(manager.volume)

    def _history(self, manager: Manager, n: int) -> None:
        manager.inside("history", str(n), timeout=1800)
        for options in ((), ("--json",)):
            first = manager.inside("timed", "orch", "status", *options)
            again = manager.inside("timed", "orch", "status", *options)
            for timed in (first, again):
                if timed["rc"]:
                    raise RuntimeError(f"orch status failed: {timed['stderr']}")
            label = f"orch status {' '.join(options)}".strip()
            self.add(f"{label} over {n:,} finished tasks", "-",
                     f"{again['wall']:.2f} s (the first time: {first['wall']:.2f} s)", None, "< 0.3 s",
                     again["wall"] < 0.3)  # fmt: skip
        ids = manager.inside("tasks", f"{self.run_id}-h", str(self.sizes.waited), "[bench-long] Wait a while.")["ids"]
        manager.orch("start", *ids)
        self.wait_cpu(manager, ids, f"{n:,} finished tasks: orch wait on {len(ids)} running tasks", 1.0)
        # The Manager agent's own way: every task of the volume, the history included.
        more = manager.inside("tasks", f"{self.run_id}-k", str(self.sizes.waited), "[bench-long] Wait.")["ids"]
        manager.orch("start", *more)
        self.wait_cpu(manager, more, f"{n:,} finished tasks: orch wait --all, {len(more)} of them running", 1.0,
                      "--all")  # fmt: skip

    def rate_limit(self) -> None:
        """N tasks at once, each agent (the real Claude Code) asking one slow answer of an API that
        answers K at a time and 429 with retry-after beyond: the batch's span at the API against the
        ideal (N answers, K at a time), through the relay's bound (the default, which the 429s lower
        to what the API takes) and with a bound of 1000 (the relay's pauses alone)."""
        n, k, seconds = self.sizes.limited_tasks, self.sizes.capacity, self.sizes.answer_seconds
        ideal = n * seconds / k
        figures: dict[str, tuple[float, int, int]] = {}
        for side, options in (("bound", ()), ("no bound", ("--api-in-flight", "1000"))):
            with ScriptedAPI(capacity=k, retry_after=max(0.5, seconds / 4)) as api:
                api.script("bench-limited", slow(seconds, text("done")))
                manager = self.start_manager(f"limit-{side.replace(' ', '-')}", api_url=api.url, options=options)
                try:
                    ids = manager.inside("tasks", f"{self.run_id}-l", str(n), "[bench-limited] Answer.")["ids"]
                    manager.orch("start", "--all", "--max-workers", str(n))
                    manager.orch("wait", "--all", check=False)
                    states = manager.inside("states", *ids)
                finally:
                    self.discard(manager.volume)
                answered = [r.received for r in api.requests if r.marker == "bench-limited" and r.answer[:3] != "429"]
                if not answered:
                    raise RuntimeError(f"no answer reached the agents ({side}): {states}")
                span = max(answered) + seconds - min(answered)
                figures[side] = (span, api.rate_limited, sum(state == "success" for state in states.values()))
        span, refused, ok = figures["bound"]
        other, other_refused, other_ok = figures["no bound"]
        self.add(
            f"{n} real-CLI tasks against an API taking {k} at once (429 + retry-after beyond): span at the API vs "
            f"the ideal {ideal:.0f} s; beside it, a bound of 1000",
            f"bound 1000: {other:.1f} s, {other_refused} 429s, {other_ok}/{n} ok",
            f"{span:.1f} s, {refused} 429s, {ok}/{n} ok",
            span / ideal,
            "<= 1.25x, all ok",
            span / ideal <= 1.25 and ok == n,
        )

    def relay_overhead(self) -> None:
        """Time to the first byte of a streamed answer, through the relay vs straight to the API,
        with this many streams at once (the relay here in this process, as the control plane runs it)."""
        from orchestrator.relay import ApiRelay, RelaySettings  # the host's copy: no container between
        from orchestrator.secrets import ClaudeCredential

        count = self.sizes.streams
        body = json.dumps({"model": "claude-sonnet-4-5", "stream": True, "tools": [{"name": "Bash"}],
                           "messages": [{"role": "user", "content": "[bench-ttfb] Hi."}]}).encode()  # fmt: skip
        with ScriptedAPI() as api:
            api.script("bench-ttfb", text("hi"))
            settings = RelaySettings(max_in_flight=count, account_in_flight=count)
            with ApiRelay(ClaudeCredential("sk-ant-oat01-bench"), api.url, settings=settings) as relay:

                def first_bytes(url: str, ticket: str) -> list[float]:
                    times: list[float] = [0.0] * count
                    go = threading.Barrier(count)

                    def one(index: int) -> None:
                        go.wait()
                        times[index] = time_to_first_byte(url, ticket, body)

                    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
                    for thread in threads:
                        thread.start()
                    for thread in threads:
                        thread.join(120)
                    return times

                rounds: dict[str, list[float]] = {"direct": [], "relay": []}
                for turn in range(4):
                    for side in ("direct", "relay") if turn % 2 else ("relay", "direct"):
                        url, ticket = (api.url, "sk-ant-oat01-bench") if side == "direct" else (relay.url, relay.ticket)
                        rounds[side].append(median(first_bytes(url, ticket)))
        direct, through = median(rounds["direct"][1:]), median(rounds["relay"][1:])  # the first round warms up
        self.add(
            f"relay overhead: time to first byte of {count} streams at once, through the relay vs direct",
            f"{direct * 1000:.1f} ms", f"{through * 1000:.1f} ms", through / direct, "for reference", None,
        )  # fmt: skip

    # --- The table.

    def table(self) -> str:
        head = ("comparison", "plain docker", "orchestrator", "ratio", "target", "met")
        rows = [head, *[(r.what, r.plain, r.ours, r.ratio, r.target,
                         "-" if r.met is None else "yes" if r.met else "NO") for r in self.rows]]  # fmt: skip
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(lines)


@dataclass(frozen=True)
class Manager:
    name: str
    volume: str

    @property
    def control(self) -> str:
        """Its control plane, where the batch's work is done (and its files written)."""
        return f"{self.name}-control"

    def inside(self, *args: str, timeout: float = 600) -> dict:
        """A command of bench/inside.py, run in this manager's control plane."""
        return self._inside(self.control, args, timeout)

    def in_manager(self, *args: str, timeout: float = 600) -> dict:
        """A command of bench/inside.py, run in the manager itself (where its agent runs commands)."""
        return self._inside(self.name, args, timeout)

    @staticmethod
    def _inside(container: str, args: tuple[str, ...], timeout: float) -> dict:
        proc = run("docker", "exec", "-i", container, "python3", "-P", "-", *args, input=INSIDE.read_bytes(),
                   timeout=timeout)  # fmt: skip
        return json.loads(proc.stdout)

    def orch(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return run("docker", "exec", self.name, "orch", *args, check=check, timeout=1800)


def alternate(
    reps: int, ours: Callable[[int], float], plain: Callable[[int], float], after: Callable[[int], None]
) -> tuple[float, float]:
    """The medians of ``reps`` timings of each, taken in turns, the order swapped every round (the first
    round warms up and does not count); ``after`` cleans up after each round."""
    times: dict[str, list[float]] = {"ours": [], "plain": []}
    for n in range(reps + 1):
        order = [("ours", ours), ("plain", plain)]
        for name, measure in order if n % 2 else reversed(order):
            elapsed = measure(n)
            if n:
                times[name].append(elapsed)
            time.sleep(0.3)  # the engine finishes what the last one started
        after(n)
        time.sleep(0.3)
    return median(times["ours"]), median(times["plain"])


def agent_started(container: str) -> float:
    """When the worker's runtime started its agent (its workspace ready), from the engine's
    timestamp of that log line."""
    logs = run("docker", "logs", "--timestamps", container, check=False)
    for line in (logs.stdout + logs.stderr).decode("utf-8", "replace").splitlines():
        stamp, _, said = line.partition(" ")
        if "] running the agent" in said:
            # 2026-12-01T06:55:01.123456789Z: Python reads microseconds at most.
            whole, _, fraction = stamp.rstrip("Z").partition(".")
            return datetime.fromisoformat(f"{whole}.{fraction[:6] or '0'}+00:00").timestamp()
    raise RuntimeError(f"{container} never started its agent: {logs.stdout.decode()[-500:]}")


def make_history(bare: Path, work: Path, megabytes: int) -> None:
    """A bare repository with ``megabytes`` of history that does not compress (random files, a
    tenth in each of ten commits), as a real application's assets are."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b"}  # fmt: skip
    run("git", "init", "-q", "-b", "main", str(work), env=env)
    for n in range(10):
        (work / f"asset-{n}.bin").write_bytes(os.urandom(megabytes * 1024 * 1024 // 10))
        run("git", "add", "-A", env=env, cwd=work)
        run("git", "commit", "-qm", f"Assets {n}", env=env, cwd=work)
    run("git", "clone", "-q", "--bare", str(work), str(bare), env=env, timeout=1800)
    shutil.rmtree(work)


class CountingProxy:
    """A TCP proxy on 127.0.0.1 in front of the benchmark's git server: it counts the bytes the
    server sends, which is what clones and fetches read from origin."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def take(self) -> int:
        """The bytes sent since the last take."""
        with self.lock:
            sent, self.sent = self.sent, 0
        return sent

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, dest: socket.socket, count: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                dest.sendall(data)
                if count:
                    with self.lock:
                        self.sent += len(data)
        except OSError:
            pass
        finally:
            for end in (source, dest):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


def pause(seconds: int) -> str:
    """A command that takes ``seconds``."""
    return f"python3 -c 'import time; time.sleep({seconds})'"


def without(argv: list[str], option: str, value: str) -> list[str]:
    """``argv`` without the pair ``option value``."""
    for i in range(len(argv) - 1):
        if argv[i] == option and argv[i + 1] == value:
            return argv[:i] + argv[i + 2 :]
    raise ValueError(f"{option} {value} is not in {argv}")


def time_to_first_byte(url: str, ticket: str, body: bytes) -> float:
    """Seconds from sending a streamed request to the first byte of the answer's body."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    try:
        t0 = time.monotonic()
        conn.request("POST", "/v1/messages?beta=true", body, {"Content-Type": "application/json",
                     "Authorization": f"Bearer {ticket}", "anthropic-version": "2023-06-01"})  # fmt: skip
        answer = conn.getresponse()
        answer.read(1)
        elapsed = time.monotonic() - t0
        if answer.status != 200:
            raise RuntimeError(f"a stream got {answer.status}")
        answer.read()
        return elapsed
    finally:
        conn.close()


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def machine() -> str:
    memory = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    server = run("docker", "version", "--format", "{{.Server.Version}}", check=False).stdout.decode().strip()
    client = run("docker", "version", "--format", "{{.Client.Version}}", check=False).stdout.decode().strip()
    return (f"{os.cpu_count()} CPUs, {memory} of memory, {platform.system()} {platform.release()}, "
            f"Docker engine {server} (client {client}), Python {platform.python_version()}")  # fmt: skip


def build(image_prefix: str) -> None:
    certs = [images.read_ca_cert(p) for p in os.environ.get("ORCHESTRATOR_CA_CERTS", "").split(os.pathsep) if p]
    images.build_manager_image(f"{image_prefix}orchestrator", certs, show_progress=False)
    images.build_worker_image(f"{image_prefix}flutter", "flutter", f"{image_prefix}orchestrator",
                              {"FLUTTER_VERSION": "none"}, show_progress=False)  # fmt: skip


STEPS: dict[str, Callable[[Bench], None]] = {
    "spawn": Bench.spawn,
    "throughput": Bench.throughput,
    "at-once": Bench.at_once_and_wait,
    "wait": Bench.wait_fresh,
    "history": Bench.history,
    "clone": Bench.clone,
    "rate-limit": Bench.rate_limit,
    "relay": Bench.relay_overhead,
}


@contextmanager
def timer(what: str) -> Iterator[None]:
    t0 = time.monotonic()
    print(f"{what} ...", flush=True)
    yield
    print(f"{what}: {time.monotonic() - t0:.0f} s", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="every comparison, tiny, with no target judged")
    parser.add_argument("--prefix", default="orch-bench-", help="prefix of the containers and volumes it makes")
    parser.add_argument("--image-prefix", help="the images to use (default: the prefix); built unless --no-build")
    parser.add_argument("--no-build", action="store_true", help="use the images as they are")
    parser.add_argument("--only", nargs="+", choices=list(STEPS), help="run only these comparisons")
    args = parser.parse_args(argv)
    image_prefix = args.image_prefix or args.prefix
    bench = Bench(SMOKE if args.smoke else FULL, args.prefix, image_prefix, args.smoke)
    failed: list[str] = []
    try:
        if not args.no_build:
            with timer(f"building {image_prefix}orchestrator and {image_prefix}flutter"):
                build(image_prefix)
        bench.start_services()
        for step in args.only or list(STEPS):
            with timer(step):
                try:
                    STEPS[step](bench)
                except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
                    # The other comparisons still run; the table says what failed.
                    print(f"  {step} failed: {exc}", flush=True)
                    reason = str(exc).splitlines()[0][:150]
                    bench.rows.append(Row(f"{step}: failed ({reason})", "-", "-", "", "-", False))
                    failed.append(step)
    finally:
        print("cleaning up", flush=True)
        bench.cleanup()
    print()
    print(f"machine: {machine()}")
    print(bench.table())
    if failed:
        print(f"bench.py: error: {', '.join(failed)} could not be measured", file=sys.stderr)
        return 2
    return 0 if all(row.met is not False for row in bench.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
