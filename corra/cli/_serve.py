"""``corra serve``: the runtime as a service, with the HTTP API, until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import trio

import corra
from corra._errors import ConfigError
from corra._runtime import open_runtime
from corra.api._files import TOKEN_FILE
from corra.cli._parser import EXIT_OK, parse_duration, runtime_options
from corra.processes._retention import check_count


def serve(args: argparse.Namespace, state_dir: Path) -> int:
    from corra.api._files import parse_listen
    from corra.api._server import Listen

    host, port = parse_listen(args.listen)
    output_limit = runtime_options(args)
    if args.retain_finished is not None:
        args.retain_seconds = parse_duration(args.retain_finished, "--retain-finished")
    if args.retain_count is not None:
        check_count("--retain-count", args.retain_count)
    for option in ("certfile", "keyfile"):
        path = getattr(args, option)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"--{option}: {path}: no such file")
    listen = Listen(
        host=host,
        port=port,
        socket=state_dir.absolute() / "api.sock",
        certfile=args.certfile,
        keyfile=args.keyfile,
        access_log=args.access_log,
    )
    if not listen.tls and host not in ("127.0.0.1", "::1", "localhost"):
        print(
            f"corra serve: warning: listening on {host} without TLS: the token crosses the "
            "network in the clear (--certfile/--keyfile)",
            file=sys.stderr,
        )
    token_file = Path(args.token_file) if args.token_file else state_dir / TOKEN_FILE
    if args.jobs is not None:
        from corra._jobfile import load_job_file

        args.job_file = load_job_file(args.jobs)  # (checked whole before anything starts)
        if not args.job_file.jobs:
            raise ConfigError(f"--jobs: {args.jobs} has no [[job]] table")
    if args.workflows:
        from corra.workflows._python import load_workflows

        args.python_jobs = {}
        for source in args.workflows:  # (imported before anything starts: an error stops it)
            args.python_jobs.update(load_workflows(source))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    try:
        return trio.run(_serve, args, state_dir, listen, token_file.absolute(), output_limit)
    except BaseExceptionGroup as group:
        raise _sole(group) from None


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception in a group of nurseries' (a refused address, a locked state dir), so
    that it is reported as itself; else the group."""
    leaves = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else group


async def _serve(
    args: argparse.Namespace, state_dir: Path, listen: Any, token_file: Path, output_limit: int
) -> int:
    from corra.api._app import open_api
    from corra.api._files import load_token, remove_info, write_info
    from corra.api._server import serve_api

    stop = trio.Event()
    # Open first: a SIGTERM during the recovery stops the service as gracefully as later.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as outer:
            outer.start_soon(_watch_signals, signals, stop, outer.cancel_scope)
            job_file = getattr(args, "job_file", None)
            async with open_runtime(
                state_dir=state_dir,
                hosts=job_file.hosts if job_file is not None else None,
                logins=job_file.logins if job_file is not None else None,
                max_running=args.max_running,
                output_limit=output_limit,
                retain_finished=getattr(args, "retain_seconds", None),
                retain_count=args.retain_count,
            ) as rt:
                if job_file is not None:
                    rt.workflows.define(job_file.jobs)
                    outer.start_soon(_reload_on_hangup, args.jobs, rt.workflows)
                rt.workflows.define(getattr(args, "python_jobs", {}))
                token = await trio.to_thread.run_sync(load_token, token_file)
                report = rt.recovery
                if report is not None and (report.resumed or report.set_aside):
                    print(
                        f"corra serve: recovered {len(report.resumed)} active process(es)"
                        + (f", set aside {len(report.set_aside)}" if report.set_aside else ""),
                        file=sys.stderr,
                    )
                async with open_api(rt, token=token) as api, trio.open_nursery() as nursery:
                    urls = await nursery.start(
                        lambda task_status: serve_api(
                            api.app, listen, shutdown_trigger=stop.wait, task_status=task_status
                        )
                    )
                    info = {
                        "pid": os.getpid(),
                        "url": urls[0] if listen.host is not None else None,
                        "socket": str(listen.socket),
                        "token_file": str(token_file),
                        "version": corra.__version__,
                    }
                    await trio.to_thread.run_sync(write_info, state_dir, info)
                    _freeze_what_started()
                    print(
                        f"corra serve: listening on {' and '.join(urls)} "
                        f"(state dir {state_dir}, token in {token_file})",
                        flush=True,
                    )
                    try:
                        await stop.wait()
                    finally:
                        api.stop()  # the streams end, so that the graceful stop is quick
                        remove_info(state_dir)
            outer.cancel_scope.cancel()
    return EXIT_OK


def _freeze_what_started() -> None:
    """Leave what the service made to start (modules, the converters' generated code, the
    app: hundreds of thousands of objects that live as long as it) out of the garbage
    collector's full collections: a full collection walks every object, in whichever
    thread allocates at the time, and holds the interpreter's lock while it does, so that
    a service that had walked them all stalled its event loop for 50-80 ms now and then
    (`/v1/health` while clients list and a prune runs: benchmarks/scale.py)."""
    gc.collect()
    gc.freeze()


async def _reload_on_hangup(path: str, runs: Any) -> None:
    """SIGHUP loads the job file again: its jobs, for the runs requested from now on (a run
    keeps the definition it started with). A file that does not load changes nothing."""
    from corra._jobfile import load_job_file

    with trio.open_signal_receiver(signal.SIGHUP) as hangups:
        async for _ in hangups:
            try:
                jobs = (await trio.to_thread.run_sync(load_job_file, path)).jobs
            except ConfigError as exc:
                print(f"corra serve: SIGHUP: {path} not loaded: {exc}", file=sys.stderr)
                continue
            runs.define(jobs)
            names = ", ".join(sorted(jobs)) or "none"
            print(f"corra serve: SIGHUP: jobs of {path} loaded: {names}", file=sys.stderr)


async def _watch_signals(signals: Any, stop: trio.Event, scope: trio.CancelScope) -> None:
    """The first SIGTERM or SIGINT stops the service gracefully; a second one at once."""
    async for signum in signals:
        name = signal.Signals(signum).name
        if not stop.is_set():
            print(
                f"corra serve: {name}: stopping; programs keep running, and the next "
                "`corra serve` reattaches them",
                file=sys.stderr,
                flush=True,
            )
            stop.set()
        else:
            print(f"corra serve: {name} again: stopping now", file=sys.stderr, flush=True)
            scope.cancel()
