"""``ps``, ``show``, ``history`` and ``logs``: through the service if one runs (or ``--url``
is given), else from the state dir, read-only, also while a ``corra run`` uses it (LMDB
allows concurrent readers)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from corra._errors import NoSuchProcess, NoSuchRun
from corra._readonly import open_state_query
from corra.api._client import ApiError, Client, ConnectionLost, NotServing
from corra.api._wire import record_json, transition_json, view_json
from corra.cli._parser import EXIT_OK, parse_label
from corra.cli._render import print_counts, print_history, print_json, print_ps, print_show
from corra.cli._service import quoted, service
from corra.cli._workflows import show_run_here, show_run_via
from corra.processes._lifecycle import PHASES, TERMINAL
from corra.processes._listing import Selection
from corra.processes._query import ProcessQuery


def _read_only(
    args: argparse.Namespace,
    state_dir: Path,
    via_service: Callable[[Client], int],
    from_state_dir: Callable[[ProcessQuery], Awaitable[int]],
) -> int:
    """``via_service`` if a service runs (or --url is given), else ``from_state_dir``; also
    when the service goes away while it answers (stopped, or killed as the request came:
    the connection is reset), since the state dir holds the same answer."""
    try:
        with service(args, state_dir) as client:
            return via_service(client)
    except (NotServing, ConnectionLost):
        return trio.run(_read_state_dir, state_dir, from_state_dir)


async def _read_state_dir(state_dir: Path, read: Callable[[ProcessQuery], Awaitable[int]]) -> int:
    async with open_state_query(state_dir) as query:
        return await read(query)


#: Processes asked for per page when `corra ps` reads many (the API's most).
PS_PAGE = 1000
_TIMES = ("created_after", "created_before", "ended_after", "ended_before")


def ps(args: argparse.Namespace, state_dir: Path) -> int:
    labels = tuple(parse_label(text) for text in args.label)
    phases = tuple(dict.fromkeys(args.phase))
    ended = args.ended_after is not None or args.ended_before is not None
    if not phases and not args.all and not ended:  # (an end time: the terminal ones)
        phases = tuple(phase for phase in PHASES if phase not in TERMINAL)
    bounds = {field: getattr(args, field) for field in _TIMES}
    selection = Selection(phases=phases, labels=labels, name=args.name, **bounds)

    def via_service(client: Client) -> int:
        params: dict[str, Any] = {}
        if phases:
            params["phase"] = list(phases)
        if labels:
            params["label"] = [f"{key}={value}" for key, value in labels]
        if args.name is not None:
            params["name"] = args.name
        params.update((field, at) for field, at in bounds.items() if at is not None)
        items: list[dict[str, Any]] = []
        cursor = args.cursor
        while True:
            asked = {**params, "limit": _page_size(args, items)}
            if cursor is not None:
                asked["cursor"] = cursor
            _, found = client.call("GET", "/v1/processes", params=asked)
            items += found["items"]
            cursor = found["next_cursor"]
            if _complete(args, items, cursor):
                break
        counts: dict[str, int] = {}
        if not (args.json or args.quiet):
            counts = client.call("GET", "/v1/processes:counts")[1]["phases"]
        return _print_listing(args, items, cursor, 0, counts)

    async def from_state_dir(query: ProcessQuery) -> int:
        items: list[dict[str, Any]] = []
        cursor, corrupt = args.cursor, 0
        while True:
            found = await query.list(selection, cursor=cursor, limit=_page_size(args, items))
            items += [record_json(view.record, view.recorded, view.status) for view in found.items]
            cursor, corrupt = found.next_cursor, corrupt + found.corrupt
            if _complete(args, items, cursor):
                break
        counts = {} if args.json or args.quiet else await query.phase_counts()
        return _print_listing(args, items, cursor, corrupt, counts)

    return _read_only(args, state_dir, via_service, from_state_dir)


def _page_size(args: argparse.Namespace, items: list[dict[str, Any]]) -> int:
    return PS_PAGE if args.limit is None else min(PS_PAGE, args.limit - len(items))


def _complete(args: argparse.Namespace, items: list[dict[str, Any]], cursor: str | None) -> bool:
    return cursor is None or (args.limit is not None and len(items) >= args.limit)


def _print_listing(
    args: argparse.Namespace,
    items: list[dict[str, Any]],
    cursor: str | None,
    corrupt: int,
    counts: dict[str, int],
) -> int:
    """Print a listing as `corra ps` does: ids, JSON, or a table and the counts per phase."""
    if args.quiet:
        for item in items:
            print(item["id"])
    elif args.json:
        print_json({"items": items, "next_cursor": cursor})
    else:
        print_ps(items, corrupt=corrupt)
        print_counts(counts, more=cursor)
    return EXIT_OK


def show(args: argparse.Namespace, state_dir: Path) -> int:
    def via_service(client: Client) -> int:
        params = {"show_env": "true"} if args.show_env else None
        try:
            _, data = client.call("GET", f"/v1/processes/{quoted(args.process)}", params=params)
        except ApiError as exc:
            if exc.status != 404:
                raise
            try:  # (no such process: a run?)
                return show_run_via(client, args.process, args.json)
            except ApiError as missing:
                if missing.status == 404:
                    raise exc from None
                raise
        print_show(data, args.json, args.show_env)
        return EXIT_OK

    async def from_state_dir(query: ProcessQuery) -> int:
        try:
            view = await query.show(args.process)
        except NoSuchProcess as exc:
            try:
                return await show_run_here(query, args.process, args.json)
            except NoSuchRun:
                raise exc from None
        data = view_json(view, show_env=args.show_env)
        print_show(data, args.json, args.show_env)
        return EXIT_OK

    return _read_only(args, state_dir, via_service, from_state_dir)


def history(args: argparse.Namespace, state_dir: Path) -> int:
    """``corra history``: a process's transitions, a page at a time (`_page_size`)."""

    def via_service(client: Client) -> int:
        path = f"/v1/processes/{quoted(args.process)}/history"
        items: list[dict[str, Any]] = []
        cursor = args.cursor
        while True:
            params = {"limit": _page_size(args, items), **({"cursor": cursor} if cursor else {})}
            _, found = client.call("GET", path, params=params)
            items += found["items"]
            cursor = found["next_cursor"]
            if _complete(args, items, cursor):
                return _print_history(args, items, cursor)

    async def from_state_dir(query: ProcessQuery) -> int:
        record = query.get(args.process)
        items: list[dict[str, Any]] = []
        cursor = args.cursor
        while True:
            found = query.history_page(record, cursor=cursor, limit=_page_size(args, items))
            items += [transition_json(transition) for transition in found.items]
            cursor = found.next_cursor
            if _complete(args, items, cursor):
                return _print_history(args, items, cursor)

    return _read_only(args, state_dir, via_service, from_state_dir)


def _print_history(args: argparse.Namespace, items: list[dict[str, Any]], cursor: Any) -> int:
    if args.json:
        print_json({"items": items, "next_cursor": cursor})
    else:
        print_history(items)
        if cursor is not None:
            print(f"(more: --cursor {cursor})")
    return EXIT_OK


def logs(args: argparse.Namespace, state_dir: Path) -> int:
    stream = "stderr" if args.stderr else "stdout"
    position: dict[str, int] = {}  # attempt and offset reached through the service

    def via_service(client: Client) -> int:
        return _logs_via_service(client, args, stream, position)

    async def from_state_dir(query: ProcessQuery) -> int:
        return await _logs_from_state_dir(query, args, stream, position)

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


async def _logs_from_state_dir(
    query: ProcessQuery, args: argparse.Namespace, stream: str, position: dict[str, int]
) -> int:
    """Print the output as the program wrote it, from where the service left off (if it
    went away during a --follow), else from the start of the current attempt."""
    out = sys.stdout.buffer
    record = query.get(args.process)
    attempt = position.get("attempt", record.state.attempt)
    end = None if args.follow else await query.log_end(record, stream, attempt)
    entries = query.follow_logs(
        record.id,
        stream=stream,
        attempt=attempt,
        offset=position.get("offset", 0),
        follow=args.follow,
        end=end,
    )
    async with contextlib.aclosing(entries):
        async for entry in entries:
            out.write(entry.data)
            out.flush()
    return EXIT_OK
