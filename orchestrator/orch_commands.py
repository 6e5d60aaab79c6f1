"""orch's commands, one function each, thin over the batch's functions (batch.py, views.py,
reconcile.py) and given the context its main built."""

from __future__ import annotations

import argparse
import difflib
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from . import batch, batches, config, limits, spending
from .context import Context
from .dependencies import unstarted_dependencies, with_submitted_dependencies
from .dispatcher import (
    ROUND_SECONDS,
    Dispatcher,
    dispatcher_running,
    ensure_dispatcher,
    max_workers,
)
from .display import duration, money, now, progress_line, shorten, status_json, status_table, summary
from .docker import DaemonUnreachable, DockerMissing, engine_cpus, image_exists, images_named, running_managers
from .egress_choice import check_hosts
from .egress_counts import counts_of
from .engine_events import EVERYTHING, EngineLook
from .errors import EXIT_FAILURE, EXIT_OK, InvalidInput, UserError
from .reconcile import reconcile
from .secrets import ClaudeCredential
from .settled import ViewCache
from .store import OrchestrationDir
from .tasks import SETTLED_STATES, Batch, State, check_budget, natural_key
from .views import TaskView, check_known, load_views, select


def volume_dir(ctx: Context, args: argparse.Namespace) -> OrchestrationDir:
    """The shared volume, where orch runs: the manager's, not the host."""
    orch = ctx.orch
    if not (orch.root / "tasks").is_dir():
        raise UserError(f"{orch.root / 'tasks'} does not exist: {where_orch_runs(args.command)}")
    return orch


def where_orch_runs(command: str, volume: str | None = None) -> str:
    """orch runs where the shared volume is mounted: the manager. Which one, from the host."""
    try:
        managers = running_managers(volume)
    except (DockerMissing, DaemonUnreachable):
        managers = []
    if not managers:
        return "orch runs where the shared volume is mounted, in a manager container; none runs (bin/run.py starts one)"
    tries = " or ".join(f"`docker exec -it {name} orch {command}`" for name in managers)
    return f"orch runs where the shared volume is mounted, in the manager container: from the host, {tries}"


def current_views(
    ctx: Context,
    cache: ViewCache,
    look: EngineLook = EVERYTHING,
    ids: Sequence[str] | None = None,
    batch_id: str | None = None,
) -> list[TaskView]:
    """The tasks ``ids`` (checked: ``check_known``), else every task, reconciled with the engine
    as ``look`` says; and a dispatcher running when work waits for one."""
    orch = ctx.orch
    with orch.locked():
        views = cache.views(ids)
        if ids is None:
            views = batches.in_batch(views, batch_id)
        if look:
            views = reconcile(orch, views, ctx.engine, only=look.only)
        # Asked only when no dispatcher runs (one decides to exit under this lock), and about the
        # tasks asked about: what they wait for makes them need one.
        wanted = not dispatcher_running(orch) and batch.needs_dispatcher(
            views, orch.load_settings().resume_limit(ctx.settings.resume_interrupted)
        )
    if wanted:
        ensure_dispatcher(ctx)
    return views


def cmd_submit(ctx: Context, args: argparse.Namespace) -> int:
    orch = volume_dir(ctx, args)
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
    check_with_engine(ctx, worker=args.worker, cpus=args.cpus)
    with orch.locked():
        into, started = batches.current_or_new(orch, prompt)
        task = batch.submit(
            orch,
            batch=into,
            prompt=prompt,
            task_id=args.id,
            worker=args.worker,
            depends_on=args.depends_on,
            timeout=args.timeout,
            max_turns=args.max_turns,
            budget_usd=args.budget_usd,
            egress=args.egress,
            allow_hosts=check_hosts(args.allow_host or (), "--allow-host"),
            model=args.model,
            memory=args.memory,
            cpus=args.cpus,
            pids_limit=args.pids_limit,
            disk=args.disk,
        )
        if args.start:
            views = load_views(orch)
            batch.queue(orch, with_submitted_dependencies(views, select(views, [task.id])))
    if args.start:
        ensure_dispatcher(ctx)
    if started:
        print(f"orch: started the batch {into.id} ({into.title}); `orch batch new TITLE` starts the next",
              file=sys.stderr)  # fmt: skip
    print(task.id)
    return EXIT_OK


def check_with_engine(ctx: Context, *, worker: str | None = None, cpus: str | None = None) -> None:
    """What only the engine can say of a task before it is queued: that its worker type has an
    image, that its CPUs are there. An engine out of reach says nothing: the start will."""
    try:
        if worker is not None:
            image = config.worker_image(worker, ctx.settings.image_prefix)
            if not image_exists(image):
                prefix = ctx.settings.image_prefix
                known = [
                    name[len(prefix) :] for name in images_named(prefix) if name != f"{prefix}{config.MANAGER_IMAGE}"
                ]
                close = difflib.get_close_matches(worker, known, n=1)
                raise InvalidInput(
                    f"--worker {worker}: there is no image {image}"
                    + (f" (did you mean {close[0]!r}?)" if close else "")
                    + f"; worker types with an image here: {', '.join(known) or 'none'} (`bin/run.py --build` builds "
                    f"{prefix}{config.DEFAULT_WORKER_TYPE}, `docker build -t {image} {worker}/` another)"
                )
        if cpus is not None and ctx.settings.engine == config.ENGINE_DOCKER:
            have = engine_cpus()
            if have is not None and float(limits.check_cpus(cpus)) > have:
                raise InvalidInput(f"--cpus {cpus}: the engine has {have} CPU{'s' if have != 1 else ''}")
    except (DockerMissing, DaemonUnreachable):
        return


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} is not UTF-8 text (byte {exc.start})") from None


def cmd_start(ctx: Context, args: argparse.Namespace) -> int:
    orch = volume_dir(ctx, args)
    settings_given = any(
        v is not None
        for v in (args.max_workers, args.resume_interrupted, args.budget_usd, args.egress, args.allow_host)
    )
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
    if args.cpus:
        check_with_engine(ctx, cpus=args.cpus)
    if not args.no_login_check and ctx.settings.login_check and not dispatcher_running(orch):
        from .login import check_login  # here: its HTTP and TLS modules would slow every command

        # A new batch: a refused login stops it here, before any worker spends its time on it.
        check_login(ClaudeCredential.find(None, ctx.env), ctx.settings.api_url)
    with orch.locked():
        views = load_views(orch)
        if args.all:
            scoped = batches.in_batch(views, batches.scope(orch, batch=args.batch, history=args.history))
            chosen = [v for v in scoped if v.state is State.SUBMITTED]
        else:
            chosen = with_submitted_dependencies(views, select(views, args.ids))
        queued = batch.queue(orch, chosen)
        settings = orch.load_settings()
        changes = {
            "max_workers": args.max_workers,
            "memory": limits.check_memory(args.memory) if args.memory else None,
            "cpus": limits.check_cpus(args.cpus) if args.cpus else None,
            "pids_limit": limits.check_pids(args.pids_limit) if args.pids_limit else None,
            "disk": limits.check_disk(args.disk) if args.disk else None,
            "resume_interrupted": args.resume_interrupted,
            "budget_usd": check_budget(args.budget_usd, "--budget-usd"),
            "egress": args.egress,
            "allow_hosts": check_hosts(args.allow_host, "--allow-host") if args.allow_host else None,
        }
        if any(value is not None for value in changes.values()):
            orch.write_settings(replace(settings, **{k: v for k, v in changes.items() if v is not None}))
    limit = max_workers(ctx)
    if queued:
        print(f"queued {len(queued)} task{'s' if len(queued) != 1 else ''}: {' '.join(queued)}")
    elif args.ids or args.all:
        print("nothing to start: no submitted task among those")
    started = ensure_dispatcher(ctx)
    print(f"up to {limit} workers at once; the dispatcher is {'started' if started else 'running'}")
    print("  watch:  orch status --watch      wait:  orch wait --all")
    return EXIT_OK


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    orch = volume_dir(ctx, args)
    engine = ctx.engine
    ids = check_known(orch, args.ids) if args.ids else None
    batch_id = None if ids else batches.scope(orch, batch=args.batch, history=args.history)
    cache = ViewCache(orch)

    def show(look: EngineLook) -> tuple[list[TaskView], str]:
        accounts = spending.load(orch)  # what the control plane's relay measured (none elsewhere)
        gate = spending.load_gate(orch)
        views = [v.with_live_cost(accounts) for v in current_views(ctx, cache, look, ids, batch_id)]
        if args.json:
            egress = {v.id: found.to_json() for v in views if (found := counts_of(orch, v.id)) is not None}
            return views, status_json(views, batch_id, accounts, gate, egress)
        spent = spending.spent_line(accounts, orch, ctx.env)
        note = f"\n{spent}: no new task starts (raise it: orch start --budget-usd N)" if spent else ""
        note += "".join(f"\n{line}" for line in spending.rate_limit_lines(gate, accounts))
        return views, status_table(views) + batch_note(orch, batch_id, bool(ids)) + note

    if not args.watch:
        print(show(EVERYTHING)[1])
        return EXIT_OK
    tty = sys.stdout.isatty()
    printed: list[tuple[str, State]] = []
    with engine.events() as events:
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


def check_waitable(orch: OrchestrationDir, cache: ViewCache, views: list[TaskView], ids: list[str] | None) -> None:
    """Refuse to wait for what will not happen: a task nobody started, or one that waits for one."""
    never = [v.id for v in views if v.state is State.SUBMITTED]
    if never:
        raise UserError(f"not started: {' '.join(never)}; start with `orch start {' '.join(never)}`")
    by_id = {v.id: v for v in views}
    if ids is not None and any(v.state is State.QUEUED for v in views):
        with orch.locked():  # what they wait for may be any task of the batch
            by_id = {v.id: v for v in cache.views()}
    stuck = [v for v in views if v.state is State.QUEUED and unstarted_dependencies(v, by_id)]
    if stuck:
        needed = sorted({dep for v in stuck for dep in unstarted_dependencies(v, by_id)}, key=natural_key)
        raise UserError(
            f"{' '.join(v.id for v in stuck)} wait{'s' if len(stuck) == 1 else ''} for "
            f"{' '.join(needed)}, never started; start with `orch start {' '.join(needed)}`"
        )
    if not views:
        raise UserError("there are no tasks to wait for")


def cmd_wait(ctx: Context, args: argparse.Namespace) -> int:
    orch = volume_dir(ctx, args)
    if args.ids and args.all:
        raise InvalidInput("give task ids or --all, not both")
    if args.timeout is not None and args.timeout <= 0:
        raise InvalidInput("--timeout must be a positive number of seconds")
    engine = ctx.engine
    ids = check_known(orch, args.ids) if args.ids else None
    batch_id = None if ids else batches.scope(orch, batch=args.batch, history=args.history)
    cache = ViewCache(orch)
    tty = sys.stderr.isatty()
    t0 = time.monotonic()
    seen, done = -1, False
    with engine.events() as events:
        while True:
            look = events.look()
            views = current_views(ctx, cache, look, ids, batch_id)
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
        note = "" if v.state is State.SUCCESS else f"  {shorten(v.message, 100)}"
        print(f"{v.id.ljust(width)}  {v.state.value.ljust(9)}  {money(v.cost)}  {duration(v.duration(at))}{note}")
    print(summary(views))
    return EXIT_OK if all(v.state is State.SUCCESS for v in views) else EXIT_FAILURE


def cmd_cancel(ctx: Context, args: argparse.Namespace) -> int:
    orch = volume_dir(ctx, args)
    engine = ctx.engine
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


# What `orch retry --failed` takes: what ended without success by itself, and what that blocked.
RETRIED_WHEN_FAILED = (State.FAILED, State.TIMEOUT, State.INTERRUPTED, State.BLOCKED)


def cmd_retry(ctx: Context, args: argparse.Namespace) -> int:
    orch = volume_dir(ctx, args)
    if bool(args.ids) == bool(args.failed):
        raise InvalidInput("give task ids or --failed, one of the two")
    ids = args.ids
    if args.failed:
        scope = batches.scope(orch, batch=args.batch, history=args.history)
        views = reconcile(orch, batches.in_batch(load_views(orch), scope), ctx.engine)
        ids = [view.id for view in views if view.state in RETRIED_WHEN_FAILED]
        if not ids:
            print("nothing to retry: no task of the batch failed, timed out, was interrupted or is blocked")
            return EXIT_OK
    for retried in batch.retry(orch, ctx.engine, ids):
        if retried.attempt is None:
            print(f"{retried.task_id}: queued again")
            continue
        kept_note = f", container {retried.kept_container}" if retried.kept_container else ""
        kept_in = orch.attempt_dir(retried.task_id)
        print(f"{retried.task_id}: attempt {retried.attempt} queued (attempt {retried.attempt - 1} kept: "
              f"{kept_in}{kept_note})")  # fmt: skip
    ensure_dispatcher(ctx)
    return EXIT_OK


def cmd_cleanup(ctx: Context, args: argparse.Namespace) -> int:
    orch = volume_dir(ctx, args)
    engine = ctx.engine
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


def cmd_dashboard(ctx: Context, args: argparse.Namespace) -> int:
    from .control.board_serve import show_board  # here: its web server's modules would slow every command

    return show_board(ctx, login=args.login)


def cmd_dispatch(ctx: Context, args: argparse.Namespace) -> int:
    volume_dir(ctx, args)
    return Dispatcher(ctx).run()


def batch_note(orch: OrchestrationDir, batch_id: str | None, named: bool) -> str:
    """The line under the status table that says whose tasks these are."""
    if named:
        return ""
    if batch_id is None:
        return "\nevery task of the volume" if orch.current_batch() else ""
    found = orch.load_batch(batch_id)
    title = f" ({found.title})" if found else ""
    return f"\nbatch {batch_id}{title}; `orch status --history` shows every task of the volume"


def cmd_batch(ctx: Context, args: argparse.Namespace) -> int:
    orch = volume_dir(ctx, args)
    if args.action == "new":
        if not args.title:
            raise InvalidInput("orch batch new needs a title: what the request is, in a few words")
        with orch.locked():
            created = batches.new_batch(orch, " ".join(args.title))
        print(created.id)
        return EXIT_OK
    if args.action == "use":
        if len(args.title) != 1:
            raise InvalidInput("orch batch use needs one batch id (see `orch batch list`)")
        chosen = batches.use_batch(orch, args.title[0])
        print(f"the current batch is {chosen.id} ({chosen.title})")
        return EXIT_OK
    if args.title:
        raise InvalidInput(f"orch batch {args.action} takes nothing more")
    current = orch.current_batch()
    if args.action == "list":
        counts: dict[str | None, Counter[str]] = {}
        for view in ViewCache(orch).views():
            counts.setdefault(view.batch, Counter())[view.state.value] += 1
        for batch_id in sorted(orch.batch_ids(), key=lambda b: (orch.load_batch(b) or Batch(b, "", "")).created_at):
            found = orch.load_batch(batch_id)
            mark = "*" if batch_id == current else " "
            states = ", ".join(f"{n} {state}" for state, n in sorted(counts.get(batch_id, Counter()).items()))
            title = found.title if found else "?"
            print(f"{mark} {batch_id}  {found.created_at if found else '-'}  {title}  ({states or 'no tasks'})")
        if None in counts:
            print(f"  (no batch)  {sum(counts[None].values())} task(s) from before batches, or started by hand")
        return EXIT_OK
    if current is None:
        print("no batch yet: `orch batch new TITLE` starts one (orch submit starts one too)")
        return EXIT_OK
    found = orch.load_batch(current)
    print(f"{current} ({found.title if found else '?'})")
    return EXIT_OK
