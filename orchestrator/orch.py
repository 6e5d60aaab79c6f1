"""orch: run a batch of tasks from the manager's shell.

    orch submit --prompt "..."        write a task (task-001, task-002, ...)
    orch start --all                  queue them; the dispatcher starts workers as slots free
    orch wait --all                   block until they are done (exit 0 when all succeeded)
    orch status / result / logs       see where things stand
    orch cancel / retry / cleanup     act on them

Everything lives on the shared volume, so a new manager on the same volume carries on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from . import batch, config, environment, limits, merge
from .batch import TaskView, ViewCache, check_known, load_view, load_views, reconcile, select
from .cli import HelpFormatter, add_limit_options, run_command
from .dispatcher import (
    ROUND_SECONDS,
    Dispatcher,
    dispatcher_running,
    ensure_dispatcher,
    env_max_workers,
    max_workers,
)
from .engine import ENGINE_CHECK_SECONDS, EVERYTHING, EngineEvents, EngineLook, engine_for
from .errors import EXIT_FAILURE, EXIT_OK, InvalidInput, UserError
from .secrets import ClaudeCredential, env_secrets, scrubber
from .tasks import (
    ACTIVE_STATES,
    SETTLED_STATES,
    OrchestrationDir,
    State,
    natural_key,
)

FOLLOW_SECONDS = 0.5


def volume_dir(args: argparse.Namespace) -> OrchestrationDir:
    orch = OrchestrationDir(Path(args.orchestration_dir))
    if not (orch.root / "tasks").is_dir():
        raise UserError(
            f"{orch.root / 'tasks'} does not exist: orch runs where the shared volume is mounted, in the "
            f"manager container (from the host: `docker exec -it claude-manager orch {args.command}`)"
        )
    return orch


def now() -> datetime:
    return datetime.now(UTC)


def current_views(
    orch: OrchestrationDir,
    cache: ViewCache,
    engine: batch.Engine | None = None,
    look: EngineLook = EVERYTHING,
    ids: Sequence[str] | None = None,
) -> list[TaskView]:
    """The tasks ``ids`` (checked: ``check_known``), else every task, reconciled with the engine
    as ``look`` says; and a dispatcher running when work waits for one."""
    with orch.locked():
        views = cache.views(ids)
        if engine is not None and look:
            views = reconcile(orch, views, engine, only=look.only)
        # Asked only when no dispatcher runs (one decides to exit under this lock), and about the
        # tasks asked about: what they wait for makes them need one.
        wanted = not dispatcher_running(orch) and batch.needs_dispatcher(
            views, orch.load_settings().resume_limit(os.environ)
        )
    if wanted:
        ensure_dispatcher(orch, os.environ)
    return views


# --- Formatting.


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:.2f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _clock(stamp: str | None) -> str:
    return stamp[11:19] if stamp and len(stamp) >= 19 else "-"


def _shorten(value: str | None, limit: int = 70) -> str:
    value = " ".join((value or "").split())
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _branch(view: TaskView) -> str:
    if not view.branch:
        return "-"
    return view.branch if view.pushed else f"{view.branch} (not pushed)"


def summary(views: Sequence[TaskView]) -> str:
    counts = Counter(v.state.value for v in views)
    order = [s.value for s in State]
    parts = ", ".join(f"{counts[s]} {s}" for s in order if counts[s])
    total = sum(v.cost or 0.0 for v in views)
    return f"{len(views)} task{'s' if len(views) != 1 else ''}: {parts or 'none'} · total cost {_money(total)}"


def status_table(views: Sequence[TaskView]) -> str:
    at = now()
    rows = [("ID", "STATE", "WORKER", "STARTED", "DURATION", "COST", "BRANCH", "NOTE")]
    for v in views:
        note = v.message if v.state is not State.SUCCESS else ""
        if v.attempt > 1:
            note = f"attempt {v.attempt}" + (f"; {note}" if note else "")
        rows.append(
            (v.id, v.state.value, v.worker_type, _clock(v.started_at), _duration(v.duration(at)), _money(v.cost),
             _branch(v), _shorten(note))
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n" + summary(views)


def status_json(views: Sequence[TaskView]) -> str:
    """The document, one task a line: json's C encoder writes each, where an indented dump would
    go through its Python one, slower by far over thousands of tasks."""
    at = now()
    tasks = ",\n".join(f"    {json.dumps(v.to_json(at))}" for v in views)
    counts = json.dumps(dict(Counter(v.state.value for v in views)))
    total = json.dumps(round(sum(v.cost or 0.0 for v in views), 6))
    listed = f"[\n{tasks}\n  ]" if views else "[]"
    return f'{{\n  "tasks": {listed},\n  "counts": {counts},\n  "total_cost_usd": {total}\n}}'


# --- Commands.


def cmd_submit(args: argparse.Namespace) -> int:
    orch = volume_dir(args)
    if args.prompt is not None:
        prompt = args.prompt
    elif args.file is not None and args.file != "-":
        try:
            prompt = _utf8(Path(args.file).read_bytes(), f"--file {args.file}")
        except OSError as exc:
            raise InvalidInput(f"cannot read --file {args.file}: {exc.strerror}") from None
    elif args.file == "-" or not sys.stdin.isatty():
        prompt = _utf8(sys.stdin.buffer.read(), "the prompt on stdin")
    else:
        raise InvalidInput("no prompt: give --prompt TEXT, --file FILE, or the prompt on stdin")
    with orch.locked():
        task = batch.submit(
            orch,
            prompt=prompt,
            task_id=args.id,
            worker=args.worker,
            depends_on=args.depends_on,
            timeout=args.timeout,
            max_turns=args.max_turns,
            model=args.model,
            memory=args.memory,
            cpus=args.cpus,
            pids_limit=args.pids_limit,
            disk=args.disk,
        )
        if args.start:
            views = load_views(orch)
            batch.queue(orch, batch.with_submitted_dependencies(views, select(views, [task.id])))
    if args.start:
        ensure_dispatcher(orch, os.environ)
    print(task.id)
    return EXIT_OK


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} is not UTF-8 text (byte {exc.start})") from None


def cmd_start(args: argparse.Namespace) -> int:
    orch = volume_dir(args)
    settings_given = args.max_workers is not None or args.resume_interrupted is not None
    if (
        not args.ids
        and not args.all
        and not settings_given
        and not (args.memory or args.cpus or args.pids_limit or args.disk)
    ):
        raise InvalidInput("name the tasks to start, or --all")
    if args.ids and args.all:
        raise InvalidInput("give task ids or --all, not both")
    if args.max_workers is not None and args.max_workers <= 0:
        raise InvalidInput("--max-workers must be a positive number")
    if args.resume_interrupted is not None and args.resume_interrupted < 0:
        raise InvalidInput("--resume-interrupted must be 0 or more")
    if not args.no_login_check and not dispatcher_running(orch):
        from .login import check_login  # here: its HTTP and TLS modules would slow every command

        # A new batch: a refused login stops it here, before any worker spends its time on it.
        check_login(ClaudeCredential.find(None, os.environ), environment.ANTHROPIC_BASE_URL.get(os.environ))
    with orch.locked():
        views = load_views(orch)
        if args.all:
            chosen = [v for v in views if v.state is State.SUBMITTED]
        else:
            chosen = batch.with_submitted_dependencies(views, select(views, args.ids))
        queued = batch.queue(orch, chosen)
        settings = orch.load_settings()
        changes = {
            "max_workers": args.max_workers,
            "memory": limits.check_memory(args.memory) if args.memory else None,
            "cpus": limits.check_cpus(args.cpus) if args.cpus else None,
            "pids_limit": limits.check_pids(args.pids_limit) if args.pids_limit else None,
            "disk": limits.check_disk(args.disk) if args.disk else None,
            "resume_interrupted": args.resume_interrupted,
        }
        if any(value is not None for value in changes.values()):
            orch.write_settings(replace(settings, **{k: v for k, v in changes.items() if v is not None}))
    limit = max_workers(orch, os.environ)
    if queued:
        print(f"queued {len(queued)} task{'s' if len(queued) != 1 else ''}: {' '.join(queued)}")
    elif args.ids or args.all:
        print("nothing to start: no submitted task among those")
    started = ensure_dispatcher(orch, os.environ)
    print(f"up to {limit} workers at once; the dispatcher is {'started' if started else 'running'}")
    print("  watch:  orch status --watch      wait:  orch wait --all")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    orch = volume_dir(args)
    engine = engine_for(os.environ)
    ids = check_known(orch, args.ids) if args.ids else None
    cache = ViewCache(orch)

    def show(look: EngineLook) -> tuple[list[TaskView], str]:
        views = current_views(orch, cache, engine, look, ids)
        return views, status_json(views) if args.json else status_table(views)

    if not args.watch:
        print(show(EVERYTHING)[1])
        return EXIT_OK
    tty = sys.stdout.isatty()
    printed: list[tuple[str, State]] = []
    with EngineEvents(environment.VOLUME.require(os.environ)) as events:
        while True:
            views, shown = show(events.look())
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J" + shown + "\n(watching; Ctrl-C to stop)\n")
                sys.stdout.flush()
            elif [(v.id, v.state) for v in views] != printed:  # not on a terminal: again when a state changes
                printed = [(v.id, v.state) for v in views]
                print(shown + "\n", flush=True)
            if all(v.state in SETTLED_STATES or v.state is State.SUBMITTED for v in views):
                return EXIT_OK
            events.wait(ROUND_SECONDS)


def progress_line(views: Sequence[TaskView], elapsed: float) -> str:
    counts = Counter(v.state for v in views)
    done = sum(counts[s] for s in SETTLED_STATES)
    failed = done - counts[State.SUCCESS]
    running = counts[State.RUNNING] + counts[State.STARTING]
    cost = sum(v.cost or 0.0 for v in views)
    return (
        f"{done}/{len(views)} done ({counts[State.SUCCESS]} ok, {failed} not) · {running} running · "
        f"{counts[State.QUEUED]} queued · {_money(cost)} · {_duration(elapsed)}"
    )


def check_waitable(orch: OrchestrationDir, cache: ViewCache, views: list[TaskView], ids: list[str] | None) -> None:
    """Refuse to wait for what will not happen: a task nobody started, or one that waits for one."""
    never = [v.id for v in views if v.state is State.SUBMITTED]
    if never:
        raise UserError(f"not started: {' '.join(never)}; start with `orch start {' '.join(never)}`")
    by_id = {v.id: v for v in views}
    if ids is not None and any(v.state is State.QUEUED for v in views):
        with orch.locked():  # what they wait for may be any task of the batch
            by_id = {v.id: v for v in cache.views()}
    stuck = [v for v in views if v.state is State.QUEUED and batch.unstarted_dependencies(v, by_id)]
    if stuck:
        needed = sorted({dep for v in stuck for dep in batch.unstarted_dependencies(v, by_id)}, key=natural_key)
        raise UserError(
            f"{' '.join(v.id for v in stuck)} wait{'s' if len(stuck) == 1 else ''} for "
            f"{' '.join(needed)}, never started; start with `orch start {' '.join(needed)}`"
        )
    if not views:
        raise UserError("there are no tasks to wait for")


def cmd_wait(args: argparse.Namespace) -> int:
    orch = volume_dir(args)
    if args.ids and args.all:
        raise InvalidInput("give task ids or --all, not both")
    if args.timeout is not None and args.timeout <= 0:
        raise InvalidInput("--timeout must be a positive number of seconds")
    engine = engine_for(os.environ)
    ids = check_known(orch, args.ids) if args.ids else None
    cache = ViewCache(orch)
    tty = sys.stderr.isatty()
    t0 = time.monotonic()
    seen, done = -1, False
    with EngineEvents(environment.VOLUME.require(os.environ)) as events:
        while True:
            look = events.look()
            views = current_views(orch, cache, engine, look, ids)
            # Over a long history most rounds change nothing: nothing to check again then.
            if look or cache.changes != seen:
                seen = cache.changes
                check_waitable(orch, cache, views, ids)
                done = all(v.state in SETTLED_STATES for v in views)
            if tty:
                sys.stderr.write("\r\x1b[K" + progress_line(views, time.monotonic() - t0))
                sys.stderr.flush()
            if done:
                break
            if args.timeout is not None and time.monotonic() - t0 > args.timeout:
                if tty:
                    sys.stderr.write("\n")
                waiting = [v.id for v in views if v.state not in SETTLED_STATES]
                print(f"orch wait: still not done after {args.timeout} s: {' '.join(waiting)}", file=sys.stderr)
                return EXIT_FAILURE
            events.wait(ROUND_SECONDS)
    if tty:
        sys.stderr.write("\n")
    width, at = max(len(v.id) for v in views), now()
    for v in views:
        note = "" if v.state is State.SUCCESS else f"  {_shorten(v.message, 100)}"
        print(f"{v.id.ljust(width)}  {v.state.value.ljust(9)}  {_money(v.cost)}  {_duration(v.duration(at))}{note}")
    print(summary(views))
    return EXIT_OK if all(v.state is State.SUCCESS for v in views) else EXIT_FAILURE


def cmd_result(args: argparse.Namespace) -> int:
    orch = volume_dir(args)
    view = load_view(orch, check_known(orch, [args.id])[0])
    result = batch.attempt_result(orch, args.id, args.attempt)
    if result is None:
        raise UserError(f"task {args.id} has no result yet ({view.state.value})")
    if args.json:
        print(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
        return EXIT_OK
    facts = [
        f"started {result.started_at}" if result.started_at else None,
        f"took {_duration(result.duration_seconds)}" if result.duration_seconds is not None else None,
        f"cost {_money(result.cost_usd)}" if result.cost_usd is not None else None,
        f"{result.num_turns} turn{'s' if result.num_turns != 1 else ''}" if result.num_turns is not None else None,
        f"model {result.model}" if result.model else None,
    ]
    print(f"{result.task_id}: {result.status.value} (attempt {result.attempt or 1})")
    print("  " + ", ".join(f for f in facts if f))
    if result.error:
        print(f"  error: {result.error}")
    earlier = [n for n in batch.attempt_files(orch, args.id) if n != result.attempt]
    if earlier and args.attempt is None:
        print(f"  earlier attempts: {', '.join(map(str, earlier))} (orch result {args.id} --attempt N)")
    print("output:")
    print(result.output or "(none)")
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    orch = volume_dir(args)
    view = load_view(orch, check_known(orch, [args.id])[0])
    suffix = "jsonl" if args.raw else "log"
    if args.attempt is not None and args.attempt != view.attempt:
        path = orch.attempt_path(args.id, args.attempt, suffix)
        if not path.exists():
            raise UserError(f"task {args.id} has no log for attempt {args.attempt}")
        return _print_file(path, follow=False, orch=orch, task_id=args.id)
    path = orch.log_path(args.id) if args.raw else orch.worker_log_path(args.id)
    if path.exists() or args.follow:
        return _print_file(path, follow=args.follow, orch=orch, task_id=args.id)
    # A worker that never wrote its log (one that could not start, or from before the log was
    # kept on the volume): what the engine has (docker logs, or docker service logs of a job).
    try:
        sys.stdout.write(engine_for(os.environ).logs(view.container))
    except UserError:
        raise UserError(f"task {args.id} has no log yet ({view.state.value})") from None
    return EXIT_OK


def _print_file(path: Path, *, follow: bool, orch: OrchestrationDir, task_id: str) -> int:
    out = sys.stdout.buffer
    position, last_check = 0, time.monotonic()
    while True:
        try:
            with open(path, "rb") as handle:
                handle.seek(position)
                chunk = handle.read()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            out.write(chunk)
            out.flush()
            position += len(chunk)
        if not follow:
            return EXIT_OK
        view = load_view(orch, task_id)
        if view.state in ACTIVE_STATES and time.monotonic() - last_check > ENGINE_CHECK_SECONDS:
            # A worker that died writes no more, and nothing else may be there to notice.
            last_check = time.monotonic()
            with orch.locked():
                view = reconcile(orch, [load_view(orch, task_id)], engine_for(os.environ))[0]
        if view.state in SETTLED_STATES and not chunk:
            return EXIT_OK
        time.sleep(FOLLOW_SECONDS)


def cmd_cancel(args: argparse.Namespace) -> int:
    orch = volume_dir(args)
    engine = engine_for(os.environ)
    failures = 0
    for task_id in dict.fromkeys(args.ids):
        try:
            view = batch.cancel(orch, engine, task_id)
        except batch.NothingToCancel as exc:
            print(f"{task_id}: {exc}", file=sys.stderr)
            failures += 1
            continue
        print(f"{task_id}: {view.state.value}")
    return EXIT_FAILURE if failures else EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    orch = volume_dir(args)
    for retried in batch.retry(orch, engine_for(os.environ), args.ids):
        if retried.attempt is None:
            print(f"{retried.task_id}: queued again")
            continue
        kept_note = f", container {retried.kept_container}" if retried.kept_container else ""
        kept_in = orch.attempt_dir(retried.task_id)
        print(f"{retried.task_id}: attempt {retried.attempt} queued (attempt {retried.attempt - 1} kept: "
              f"{kept_in}{kept_note})")  # fmt: skip
    ensure_dispatcher(orch, os.environ)
    return EXIT_OK


def cmd_cleanup(args: argparse.Namespace) -> int:
    orch = volume_dir(args)
    engine = engine_for(os.environ, args.volume)
    removed, kept = batch.cleanup(orch, engine, force=args.force)
    print(f"removed {len(removed)} finished worker container{'s' if len(removed) != 1 else ''}" +
          (f": {' '.join(removed)}" if removed else ""))  # fmt: skip
    released = engine.release()
    if released:
        print(f"removed the batch's swarm secrets: {' '.join(released)}")
    if kept:
        print(
            f"kept {' '.join(kept)}: work of theirs was neither pushed nor bundled, so their clone may hold the "
            f"only copy (`docker cp NAME:/workspace/repo DIR` copies it out; --force removes them anyway)"
        )
    print("results, logs and branches are kept")
    return EXIT_OK


def cmd_merge(args: argparse.Namespace) -> int:
    orch = volume_dir(args)
    if args.ids and args.all:
        raise InvalidInput("give task ids or --all, not both")
    if not args.ids and not args.all:
        raise InvalidInput("name the tasks to merge, or --all")
    views = load_views(orch)
    selected = select(views, args.ids) if args.ids else views
    to_merge, left_out = merge.choose(selected, explicit=bool(args.ids))
    into = args.into or f"{args.branch_prefix}{merge.INTEGRATION_BRANCH}"
    report = None
    if to_merge:
        env = os.environ
        report = merge.merge_branches(
            Path(args.repo_dir),
            to_merge,
            into=into,
            base_branch=environment.REPO_BRANCH.require(env),
            push=args.push,
            scrub=scrubber(env_secrets(env)),
        )
    outcomes = sorted([*(report.outcomes if report else []), *left_out], key=lambda o: natural_key(o.task_id))
    ok = (report.ok if report is not None else not args.ids) and not (args.ids and left_out)
    if args.json:
        print(json.dumps({
            "into": into, "started_from": report.start if report else None, "ok": ok,
            "pushed": report.pushed if report else False, "push_error": report.push_error if report else None,
            "tasks": [o.to_json() for o in outcomes],
        }, indent=2))  # fmt: skip
        return EXIT_OK if ok else EXIT_FAILURE
    if report is not None:
        print(f"merging into {into} (from {report.start})")
    width = max((len(o.task_id) for o in outcomes), default=0)
    for o in outcomes:
        detail = o.message or (f"{o.branch}, {len(o.files)} file(s)" if o.state == "merged" else o.branch or "")
        print(f"  {o.task_id.ljust(width)}  {o.state.ljust(14)}  {detail}")
    if report is None:
        if args.ids:
            raise UserError("nothing to merge")
        print("nothing to merge: no task that succeeded has a pushed branch")
        return EXIT_OK
    conflict = next((o for o in report.outcomes if o.state == "conflict"), None)
    if conflict is not None:
        print(f"conflict: {conflict.message}; the merge of {conflict.task_id} was undone and its branch "
              f"{conflict.branch} is untouched. Resolve it by hand, or merge it into a branch of its own.")  # fmt: skip
    if report.push_error:
        print(f"not pushed: {report.push_error}")
    elif report.pushed:
        print(f"pushed {into} to origin")
    else:
        print(f"{into} is in {args.repo_dir}; `orch merge --all --push` (or git push) publishes it")
    return EXIT_OK if ok else EXIT_FAILURE


def cmd_dispatch(args: argparse.Namespace) -> int:
    orch = volume_dir(args)
    return Dispatcher(orch, os.environ).run()


# --- The command line.


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--orchestration-dir",
        default=environment.ORCHESTRATION_DIR.get(os.environ),
        help="where the shared volume is mounted (default: $ORCHESTRATION_DIR, else /orchestration)",
    )
    common.add_argument(
        "--engine",
        choices=config.ENGINES,
        default=environment.ENGINE.require(os.environ),
        help="what runs the workers: containers on this engine, or jobs of its swarm (default: "
        f"${environment.ENGINE.name}, which run.py sets in the manager, else {environment.ENGINE.default})",
    )
    common.add_argument("--debug", action="store_true", help="print the docker commands run, and tracebacks")

    parser = argparse.ArgumentParser(
        prog="orch",
        formatter_class=HelpFormatter,
        description="Run a batch of tasks: submit them, start them under a limit of parallel workers, "
        "watch, wait, read results and logs, cancel, retry, clean up. State lives on the shared volume.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary_text: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, parents=[common], help=summary_text, description=description, formatter_class=HelpFormatter
        )

    p = command(
        "submit",
        "create a task",
        "Create a task from --prompt, --file or stdin and print its id. Ids are task-001, task-002, ... "
        "unless --id is given. An existing task is never overwritten.",
    )
    p.add_argument("--prompt", help="the task's prompt")
    p.add_argument("--file", metavar="FILE", help="read the prompt from FILE ('-' for stdin)")
    p.add_argument("--id", help="the task id (default: the next task-NNN)")
    p.add_argument(
        "--worker",
        metavar="TYPE",
        default=config.DEFAULT_WORKER_TYPE,
        help=f"worker type; the image is <prefix>TYPE (default: {config.DEFAULT_WORKER_TYPE})",
    )
    p.add_argument(
        "--depends-on",
        metavar="ID",
        nargs="+",
        action="extend",
        default=[],
        help="tasks that must succeed before this one starts",
    )
    p.add_argument("--timeout", type=int, metavar="SECONDS", help="how long the agent may run (default: 3600)")
    p.add_argument("--max-turns", type=int, metavar="N", help="stop the agent after N turns")
    p.add_argument("--model", help="model for this task (default: the manager's)")
    add_limit_options(p, defaults=False)
    p.add_argument("--start", action="store_true", help="queue the task right away (as orch start ID)")
    p.set_defaults(func=cmd_submit)

    p = command(
        "start",
        "queue tasks; the dispatcher starts them",
        "Queue submitted tasks (and the submitted tasks they depend on). A dispatcher in the background "
        "starts them as worker slots free up, each once the tasks it depends on have succeeded; a task "
        "whose dependency did not succeed is blocked.",
    )
    p.add_argument("ids", nargs="*", metavar="ID", help="tasks to start")
    p.add_argument("--all", action="store_true", help="start every submitted task")
    p.add_argument(
        "--max-workers",
        type=int,
        metavar="N",
        help=f"how many workers may run at once, from now on (default: ${environment.MAX_WORKERS.name}, else "
        f"{env_max_workers({})}; kept on the volume)",
    )
    p.add_argument(
        "--resume-interrupted",
        type=int,
        metavar="N",
        help="how often a task whose worker was stopped from outside (an engine restart, a reboot) is "
        f"queued again by itself, from what it handed back; 0: never (default: ${environment.RESUME_INTERRUPTED.name}, "
        f"else {environment.RESUME_INTERRUPTED.default}; kept on the volume)",
    )
    p.add_argument(
        "--no-login-check",
        action="store_true",
        help="start a new batch without asking the API first whether it accepts the token",
    )
    limit_options = p.add_argument_group(
        "limits of each worker from now on, kept on the volume (a task's own come first)"
    )
    add_limit_options(limit_options, defaults=False)
    p.set_defaults(func=cmd_start)

    p = command(
        "status",
        "show every task's state",
        "One row per task, checked against the engine: a worker that died without a result is shown "
        "(and recorded) as failed, with its exit code.",
    )
    p.add_argument("ids", nargs="*", metavar="ID", help="only these tasks")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--watch", action="store_true", help="keep showing it until no task is queued or running")
    p.set_defaults(func=cmd_status)

    p = command(
        "wait",
        "wait until tasks finish",
        "Block until the tasks (default: all) have finished or are blocked. Exit 0 when all succeeded, "
        "1 otherwise (also on --timeout).",
    )
    p.add_argument("ids", nargs="*", metavar="ID", help="tasks to wait for (default: all)")
    p.add_argument("--all", action="store_true", help="wait for every task")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long")
    p.set_defaults(func=cmd_wait)

    p = command("result", "show a task's result", "Show how a task ended: status, error, cost, output.")
    p.add_argument("id", metavar="ID")
    p.add_argument("--json", action="store_true", help="print the result file")
    p.add_argument("--attempt", type=int, metavar="N", help="an earlier attempt's result")
    p.set_defaults(func=cmd_result)

    p = command(
        "logs",
        "show a task's log",
        "Show what the task's worker printed (the same as docker logs), kept on the volume after the "
        "container is removed.",
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the task finishes")
    p.add_argument("--raw", action="store_true", help="the agent's raw stream-json transcript instead")
    p.add_argument("--attempt", type=int, metavar="N", help="an earlier attempt's log")
    p.set_defaults(func=cmd_logs)

    p = command(
        "cancel",
        "stop tasks",
        "Stop the tasks' workers (or take them off the queue) and record them as cancelled. What a worker "
        "produced is kept: it pushes its branch as it stops, and its container, log and transcript stay.",
    )
    p.add_argument("ids", nargs="+", metavar="ID")
    p.set_defaults(func=cmd_cancel)

    p = command(
        "retry",
        "run finished tasks again",
        "Queue a new attempt of failed, timed-out, cancelled or blocked tasks. The earlier attempt's "
        "result, transcript and log are kept under attempts/ID/, its container as worker-ID-attempt-N.",
    )
    p.add_argument("ids", nargs="+", metavar="ID")
    p.set_defaults(func=cmd_retry)

    p = command(
        "cleanup",
        "remove finished worker containers",
        "Remove the worker containers of finished tasks, and those kept by retry. A container whose work was "
        "neither pushed nor bundled is kept unless --force. Results, logs and branches are never removed.",
    )
    p.add_argument(
        "--volume",
        default=environment.VOLUME.get(os.environ),
        help=f"the shared volume whose workers to remove (default: ${environment.VOLUME.name}, else "
        f"{environment.VOLUME.default})",
    )
    p.add_argument(
        "--force", action="store_true", help="remove also the containers whose work was neither pushed nor bundled"
    )
    p.set_defaults(func=cmd_cleanup)

    p = command(
        "merge",
        "merge task branches into an integration branch",
        "In the manager's clone: fetch the tasks' branches and merge them one by one (in id order) into "
        "an integration branch, starting from its last state, else from origin's. On a conflict it stops, "
        "undoes that merge and reports the task and the files. The working tree is not touched; nothing is "
        "force-pushed or deleted. --all takes the tasks that succeeded.",
    )
    p.add_argument("ids", nargs="*", metavar="ID", help="tasks to merge, in this order")
    p.add_argument("--all", action="store_true", help="every task that succeeded with a pushed branch")
    p.add_argument(
        "--into",
        metavar="BRANCH",
        help=f"the integration branch (default: the branch prefix + {merge.INTEGRATION_BRANCH}, "
        f"{environment.BRANCH_PREFIX.default}{merge.INTEGRATION_BRANCH})",
    )
    p.add_argument("--push", action="store_true", help="push the integration branch to origin (never forced)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--repo-dir",
        default=str(Path(environment.WORKSPACE.require(os.environ)) / "repo"),
        help="the manager's clone (default: /workspace/repo)",
    )
    p.add_argument(
        "--branch-prefix",
        default=environment.BRANCH_PREFIX.get(os.environ),
        help=argparse.SUPPRESS,
    )
    p.set_defaults(func=cmd_merge)

    p = command(
        "dispatch",
        "run the dispatcher in the foreground",
        "Run the dispatcher here instead of in the background (orch start does that). It exits when no "
        "task is queued or running.",
    )
    p.set_defaults(func=cmd_dispatch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.umask(OrchestrationDir.UMASK)
    # For engine_for here, and for the dispatcher this command may start.
    os.environ[environment.ENGINE.name] = args.engine
    return run_command(f"orch {args.command}", lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
