"""``ps``, ``show`` and ``logs``: through the service if one runs (or ``--url`` is given),
else from the state dir, read-only, also while a ``corra run`` uses it (LMDB allows
concurrent readers)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from corra._errors import ConfigError
from corra._runtime import HISTORY_CODEC, RECORD_CODEC, REMOTE_LOGS
from corra.api._client import Client, ConnectionLost, NotServing
from corra.api._wire import detail_json, record_json
from corra.backends.recorded import recorded
from corra.cli._parser import EXIT_OK, parse_label
from corra.cli._render import print_ps, print_show
from corra.cli._service import quoted, service
from corra.persistence import open_store_readonly
from corra.processes._lifecycle import ACTIVE, TERMINAL
from corra.processes._process import find_record, sorted_records
from corra.processes._records import ProcessRecord


def _open_readonly(state_dir: Path) -> Any:
    if not (state_dir / "state.lmdb").exists():
        raise ConfigError(
            f"state dir {state_dir}: no corra state here (start one with `corra run` or "
            "`corra serve`)"
        )
    return open_store_readonly(state_dir)


def _read_only(
    args: argparse.Namespace,
    state_dir: Path,
    via_service: Callable[[Client], int],
    from_state_dir: Callable[[], int],
) -> int:
    """``via_service`` if a service runs (or --url is given), else ``from_state_dir``."""
    try:
        with service(args, state_dir) as client:
            return via_service(client)
    except NotServing:
        return from_state_dir()


def ps(args: argparse.Namespace, state_dir: Path) -> int:
    labels = dict(parse_label(text) for text in args.label)

    def via_service(client: Client) -> int:
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 1000}
        if args.phase:
            params["phase"] = args.phase
        if labels:
            params["label"] = [f"{key}={value}" for key, value in labels.items()]
        while True:
            _, page = client.call("GET", "/v1/processes", params=params)
            items += page["items"]
            if not page["next_cursor"]:
                break
            params["cursor"] = page["next_cursor"]
        print_ps(items, args.json, corrupt=0)
        return EXIT_OK

    def from_state_dir() -> int:
        with _open_readonly(state_dir) as store:
            records, corrupt = sorted_records(store, RECORD_CODEC)
        records = [
            r
            for r in records
            if (not args.phase or r.phase == args.phase)
            and all(r.spec.labels.get(key) == value for key, value in labels.items())
        ]
        items = [record_json(r, _recorded(state_dir, r)) for r in records]
        print_ps(items, args.json, corrupt=corrupt)
        return EXIT_OK

    return _read_only(args, state_dir, via_service, from_state_dir)


def _recorded(state_dir: Path, record: ProcessRecord) -> dict[str, Any] | None:
    """What the chaperone of ``record``'s program recorded, as JSON (None: no program, or
    nothing worth saying); read, never collected: the next runtime does that."""
    found = recorded(state_dir, record)
    return None if found is None else found.json()


def show(args: argparse.Namespace, state_dir: Path) -> int:
    def via_service(client: Client) -> int:
        params = {"show_env": "true"} if args.show_env else None
        _, data = client.call("GET", f"/v1/processes/{quoted(args.process)}", params=params)
        print_show(data, args.json, args.show_env)
        return EXIT_OK

    def from_state_dir() -> int:
        with _open_readonly(state_dir) as store:
            record = find_record(store, RECORD_CODEC, args.process)
            history = [HISTORY_CODEC.decode(raw) for raw in store.history(record.id)]
        data = detail_json(record, history, _recorded(state_dir, record), show_env=args.show_env)
        print_show(data, args.json, args.show_env)
        return EXIT_OK

    return _read_only(args, state_dir, via_service, from_state_dir)


def logs(args: argparse.Namespace, state_dir: Path) -> int:
    stream = "stderr" if args.stderr else "stdout"
    position: dict[str, int] = {}  # attempt and offset reached through the service

    def via_service(client: Client) -> int:
        return _logs_via_service(client, args, stream, position)

    def from_state_dir() -> int:
        return _logs_from_files(
            args, state_dir, stream, position.get("attempt"), position.get("offset", 0)
        )

    return _read_only(args, state_dir, via_service, from_state_dir)


def _logs_via_service(
    client: Client, args: argparse.Namespace, stream: str, position: dict[str, int]
) -> int:
    """Print the entries as they come; with --follow, reconnect from the last offset when
    the service goes away (a restart: nothing is missed or printed twice), or carry on from
    the state dir if none comes back (`NotServing` out of here, with ``position``)."""
    out = sys.stdout.buffer
    path = f"/v1/processes/{quoted(args.process)}"
    _, record = client.call("GET", path)
    position.update(attempt=record["attempt"], offset=0)
    last = False  # the process was terminal before this stream began
    while True:
        params = {
            "stream": stream,
            "attempt": position["attempt"],
            "offset": position["offset"],
            "follow": "true" if args.follow else "false",
        }
        lost = False
        try:
            for entry in client.lines(f"{path}/logs", params=params):
                out.write(entry["text"].encode())
                out.flush()
                position.update(attempt=entry["attempt"], offset=entry["next_offset"])
        except ConnectionLost:
            if not args.follow:
                raise
            lost = True
        if not args.follow or (last and not lost):
            # (a stream that began after the end drains every attempt, then ends: all read)
            return EXIT_OK
        try:
            _, record = client.call("GET", path)
        except ConnectionLost:
            record = {"phase": "unknown"}
        if record["phase"] in TERMINAL:
            # A stream ends at the end of the log or when the service stops, which look
            # alike: one more stream from here, begun after the end, tells them apart.
            last = True
            continue
        time.sleep(0.5)  # the service stops: wait for the next one (else NotServing)
        _wait_for_service(client)


def _wait_for_service(client: Client, patience: float = 10.0) -> None:
    """Until the service answers again; `NotServing` if it does not within ``patience``."""
    deadline = time.monotonic() + patience
    while True:
        try:
            client.call("GET", "/v1/health")
            return
        except (NotServing, ConnectionLost):
            if time.monotonic() > deadline:
                raise NotServing("the service did not come back") from None
            time.sleep(0.2)


def _logs_from_files(
    args: argparse.Namespace, state_dir: Path, stream: str, attempt: int | None, offset: int
) -> int:
    from corra.backends.local_process import log_file

    out = sys.stdout.buffer
    while True:
        with _open_readonly(state_dir) as store:
            record = find_record(store, RECORD_CODEC, args.process)
        if record.spec.host is not None:
            return trio.run(_remote_logs, args, state_dir, stream, attempt, offset)
        if attempt is None:
            attempt = record.state.attempt
        while attempt < record.state.attempt:
            # A later attempt writes a log of its own: finish this one first.
            _copy_log(log_file(state_dir / "runs", f"{record.id}.{attempt}", stream), offset, out)
            attempt, offset = attempt + 1, 0
        # Looked at before the last read: if the program had ended then, that read got all
        # of its output. (Its record may say running long after: no runtime collected it.)
        ended = _program_ended(state_dir, record)
        offset = _copy_log(log_file(state_dir / "runs", record.key, stream), offset, out)
        if not args.follow or ended:
            return EXIT_OK
        time.sleep(0.2)


async def _remote_logs(
    args: argparse.Namespace, state_dir: Path, stream: str, attempt: int | None, offset: int
) -> int:
    """`corra logs` of a process on a remote host: read over SSH from the host (as the
    state dir remembers it), through a pool of this command's own."""
    from corra._remote import open_remote_backends, remembered_hosts
    from corra.actors import open_runtime as open_kernel

    out = sys.stdout.buffer
    async with open_kernel() as kernel:
        hosts = await trio.to_thread.run_sync(remembered_hosts, state_dir)
        logs_dir = state_dir / REMOTE_LOGS  # (shipped logs: read with no connection at all)
        async with open_remote_backends(kernel.root, hosts, logs_dir=logs_dir) as remote:
            while True:
                with _open_readonly(state_dir) as store:
                    record = find_record(store, RECORD_CODEC, args.process)
                if record.spec.host not in hosts:
                    raise ConfigError(
                        f"{record.name}: host {record.spec.host!r} is not among the hosts "
                        f"remembered in {state_dir} ({sorted(hosts)})"
                    )
                backend = remote.backends[record.spec.backend]
                if attempt is None:
                    attempt = record.state.attempt
                # (before the reads: an end seen here means they read all of the output)
                ended = await trio.to_thread.run_sync(_program_ended, state_dir, record)
                while True:
                    key = f"{record.id}.{attempt}"
                    end = None  # (a read without -f stops where the current log ended)
                    if not args.follow and attempt >= record.state.attempt:
                        end = await backend.log_size(key, stream, record.spec.host)
                    while (end is None or offset < end) and (
                        chunk := await backend.read_log(
                            key,
                            stream,
                            offset,
                            1 << 20 if end is None else min(1 << 20, end - offset),
                            record.spec.host,
                        )
                    ):
                        out.write(chunk)
                        offset += len(chunk)
                    if attempt >= record.state.attempt:
                        break
                    attempt, offset = attempt + 1, 0  # a later attempt writes its own log
                out.flush()
                if not args.follow or ended:
                    return EXIT_OK
                await trio.sleep(1.0)


def _program_ended(state_dir: Path, record: ProcessRecord) -> bool:
    """Whether the output of ``record``'s current attempt is complete: the process is not
    active, or its chaperone recorded the end of its program (or lost it)."""
    if record.phase not in ACTIVE:
        return True
    found = recorded(state_dir, record)
    return found is not None and found.state in ("exited", "lost")


def _copy_log(path: Path | None, offset: int, out: Any) -> int:
    """Write ``path`` from ``offset`` to ``out``, up to its size when the copy began (a
    program that writes faster than ``out`` takes it would make "to the end" go on for
    ever; a follow copies the rest next time); the offset reached."""
    if path is None or not path.exists():
        return offset
    with path.open("rb") as handle:
        end = os.fstat(handle.fileno()).st_size
        handle.seek(offset)
        while offset < end and (chunk := handle.read(min(1 << 16, end - offset))):
            out.write(chunk)
            offset += len(chunk)
    out.flush()
    return offset
