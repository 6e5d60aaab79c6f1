"""orch's commands that change the repository: `orch merge` (the tasks' branches into the
integration branch) and `orch push` (the manager's own branch, handed back); and the control
plane's mirror, which takes what they pushed."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path

from . import batches, environment, handover, merge
from .context import Context
from .errors import EXIT_FAILURE, EXIT_OK, InvalidInput, UserError
from .orch_commands import volume_dir
from .secrets import env_secrets, scrubber
from .tasks import natural_key
from .views import load_views, select


def cmd_merge(ctx: Context, args: argparse.Namespace) -> int:
    orch = volume_dir(ctx, args)
    if args.ids and args.all:
        raise InvalidInput("give task ids or --all, not both")
    if not args.ids and not args.all:
        raise InvalidInput("name the tasks to merge, or --all")
    views = load_views(orch)
    scoped = batches.in_batch(views, batches.scope(orch, batch=args.batch, history=args.history))
    selected = select(views, args.ids) if args.ids else scoped
    to_merge, left_out = merge.choose(selected, explicit=bool(args.ids))
    into = args.into or f"{args.branch_prefix}{merge.INTEGRATION_BRANCH}"
    report = None
    if to_merge:
        report = merge.merge_branches(
            Path(args.repo_dir),
            to_merge,
            into=into,
            base_branch=ctx.settings.branch,
            push=args.push,
            scrub=scrubber(env_secrets(ctx.env)),
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
        refresh_mirror(ctx)
        print(f"pushed {into} to origin")
    else:
        print(f"{into} is in {args.repo_dir}; `orch merge --all --push` (or git push) publishes it")
    return EXIT_OK if ok else EXIT_FAILURE


def cmd_push(ctx: Context, args: argparse.Namespace) -> int:
    """The manager's own work (its merge, a conflict it resolved), pushed as a fast-forward to the
    integration branch or under the branch prefix (handover.py)."""
    volume_dir(ctx, args)
    prefix = args.branch_prefix or ctx.settings.branch_prefix
    branch = handover.check_target(args.branch, prefix, f"{prefix}{merge.INTEGRATION_BRANCH}")
    work = Path(args.repo_dir)
    if not (work / ".git").exists():
        raise UserError(f"{work} is not a git clone")
    manager_workspace = ctx.env.get(environment.MANAGER_WORKSPACE.name)
    if args.bundle and manager_workspace:
        bundle = handover.read_bundle(Path(args.bundle), Path(manager_workspace))
    elif args.bundle:
        raise InvalidInput("--bundle is what the manager's orch sends its control plane")
    else:
        bundle = handover.make_bundle(work, branch)
    try:
        said = handover.push(work, bundle, branch, url=ctx.settings.repo_url or "origin", env={},
                             scrub=scrubber(env_secrets(ctx.env)))  # fmt: skip
    finally:
        if args.bundle:
            bundle.unlink(missing_ok=True)
    refresh_mirror(ctx)
    print(said)
    return EXIT_OK


def refresh_mirror(ctx: Context) -> None:
    """In the control plane, the mirror takes what was just pushed (the manager fetches from it)."""
    folder = environment.MIRROR_DIR.get(ctx.env)
    if not folder or not ctx.settings.repo_url or not os.access(folder, os.W_OK):
        return
    from .control.mirror import Mirror

    git_env = {k: v for k, v in ctx.env.items() if k in ("GIT_TOKEN", environment.REPO_URL.name)}
    with contextlib.suppress(UserError):
        Mirror(Path(folder), ctx.settings.repo_url, env=git_env, scrub=scrubber(env_secrets(ctx.env))).refresh()
