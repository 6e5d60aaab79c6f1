"""orch result and orch logs: what a task did, read from the volume (and from the engine when
a worker wrote no log)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import batch
from .context import Context
from .display import duration, money
from .engine_events import ENGINE_CHECK_SECONDS
from .errors import EXIT_OK, UserError
from .orch_commands import volume_dir
from .reconcile import reconcile
from .tasks import ACTIVE_STATES, SETTLED_STATES, TaskResult
from .views import attempt_files, check_known, load_view

FOLLOW_SECONDS = 0.5


def cmd_result(ctx: Context, args: argparse.Namespace) -> int:
    orch = volume_dir(ctx, args)
    view = load_view(orch, check_known(orch, [args.id])[0])
    result = batch.attempt_result(orch, args.id, args.attempt)
    if result is None:
        raise UserError(f"task {args.id} has no result yet ({view.state.value})")
    if args.json:
        print(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
        return EXIT_OK
    facts = [
        f"started {result.started_at}" if result.started_at else None,
        f"took {duration(result.duration_seconds)}" if result.duration_seconds is not None else None,
        f"cost {money(result.cost_usd)}" if result.cost_usd is not None else None,
        f"{result.num_turns} turn{'s' if result.num_turns != 1 else ''}" if result.num_turns is not None else None,
        f"model {result.model}" if result.model else None,
    ]
    print(f"{result.task_id}: {result.status.value} (attempt {result.attempt or 1})")
    print("  " + ", ".join(f for f in facts if f))
    if result.error:
        print(f"  error: {result.error}")
    for line in work_lines(result):
        print(f"  {line}")
    earlier = [n for n in attempt_files(orch, args.id) if n != result.attempt]
    if earlier and args.attempt is None:
        print(f"  earlier attempts: {', '.join(map(str, earlier))} (orch result {args.id} --attempt N)")
    print("output:")
    print(result.output or "(none)")
    return EXIT_OK


def work_lines(result: TaskResult) -> list[str]:
    """Where the task's work is: its branch and commits, the files it changed, or what kept it."""
    lines = []
    if result.branch:
        where = "pushed" if result.pushed else "not pushed"
        count = result.commits or 0
        lines.append(f"branch: {result.branch} ({where}; {count} commit{'s' if count != 1 else ''} from "
                     f"{(result.base_commit or '?')[:12]} to {(result.head_commit or '?')[:12]})")  # fmt: skip
    elif result.commits == 0:
        lines.append("branch: none (it changed nothing)")
    if result.files_changed:
        files = [
            f"{c.get('path')} (+{c.get('added', '?')} -{c.get('deleted', '?')})" for c in result.files_changed[:20]
        ]
        more = len(result.files_changed) - len(files)
        lines.append("files: " + ", ".join(files) + (f", and {more} more" if more > 0 else ""))
    if result.bundle:
        lines.append(f"bundle: {result.bundle} (the commits; `git fetch {result.bundle} {result.branch}` takes them)")
    if result.archive:
        lines.append(f"archive: {result.archive} (the agent's clone, as it was)")
    return lines


def cmd_logs(ctx: Context, args: argparse.Namespace) -> int:
    orch = volume_dir(ctx, args)
    view = load_view(orch, check_known(orch, [args.id])[0])
    suffix = "jsonl" if args.raw else "log"
    if args.attempt is not None and args.attempt != view.attempt:
        path = orch.attempt_path(args.id, args.attempt, suffix)
        if not path.exists():
            raise UserError(f"task {args.id} has no log for attempt {args.attempt}")
        return _print_file(ctx, path, follow=False, task_id=args.id)
    path = orch.log_path(args.id) if args.raw else orch.worker_log_path(args.id)
    if path.exists() or args.follow:
        return _print_file(ctx, path, follow=args.follow, task_id=args.id)
    # A worker that never wrote its log (one that could not start, or from before the log was
    # kept on the volume): what the engine has (docker logs, or docker service logs of a job).
    try:
        sys.stdout.write(ctx.engine.logs(view.container))
    except UserError:
        raise UserError(f"task {args.id} has no log yet ({view.state.value})") from None
    return EXIT_OK


def _print_file(ctx: Context, path: Path, *, follow: bool, task_id: str) -> int:
    orch = ctx.orch
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
                view = reconcile(orch, [load_view(orch, task_id)], ctx.engine)[0]
        if view.state in SETTLED_STATES and not chunk:
            return EXIT_OK
        time.sleep(FOLLOW_SECONDS)
