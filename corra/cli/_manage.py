"""``corra rerun`` and ``corra rm``: commands that act on a selection of processes (ids and
names, and selectors: ``--failed``, ``-l key=value``, ``--name PREFIX|GLOB``,
``--ended-before``), through the running service when there is one, else on the state dir
directly. Either way the selectors are read a page at a time from the store's indexes (the
service's listing, or `corra.processes._listing` here): only the selected records are
decoded, and names and ids given are looked up one by one."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import trio

from corra._errors import ConfigError, InvalidTransition, NoSuchProcess
from corra.api._client import ApiError, Client, NotServing
from corra.api._wire import record_json
from corra.cli._parser import (
    EXIT_FAILED,
    EXIT_OK,
    parse_label,
    parse_moment,
    runtime_options,
)
from corra.cli._render import print_json
from corra.cli._service import quoted, service
from corra.processes import _listing
from corra.processes._lifecycle import PHASES, TERMINAL
from corra.processes._retention import check_count

#: What `corra rm` adds to its refusal of an active process.
_KILL_HINT = " (--kill kills it first)"
#: Processes asked for per page when a selector lists them from a service.
_PAGE = 1000


@attrs.frozen
class Selection:
    """What a command acts on: the processes ``names`` names (ids or names), and every
    process in one of ``phases`` (none: only the named ones) that has all of ``labels``, a
    name that ``name`` selects (a prefix or a glob: `corra.processes._listing.name_glob`)
    and ended before ``ended_before`` (if given). With ``keep`` (`corra prune --keep`), all
    but the ``keep`` terminal processes so selected that ended last are selected too."""

    names: tuple[str, ...]
    phases: tuple[str, ...]
    labels: dict[str, str]
    ended_before: float | None = None
    name: str | None = None
    keep: int | None = None

    def listing(self, *, ended: bool = False) -> _listing.Selection:
        """The selectors as a listing selects (none of the names given); ``ended``: every
        terminal process they select, whenever it ended, in the order of the ends."""
        ended_before = None if self.ended_before is None else max(0.0, self.ended_before)
        return _listing.Selection(
            phases=self.phases,
            labels=tuple(self.labels.items()),
            name=self.name,
            ended_before=None if ended else ended_before,
            ended_after=0.0 if ended else None,
        )

    def matches(self, process: dict[str, Any], *, ended: bool = False) -> bool:
        """Whether a process (as JSON: `record_json`) is selected by the selectors (as
        `listing` selects with ``ended``)."""
        if process["phase"] not in self.phases:
            return False
        labels = process["labels"]
        if any(labels.get(key) != value for key, value in self.labels.items()):
            return False
        if self.name is not None and not _listing.name_selected(self.name, process["name"]):
            return False
        if ended:
            return process["phase"] in TERMINAL
        if self.ended_before is not None:
            at = process["ended_at"] if process["ended_at"] is not None else process["updated_at"]
            return process["phase"] in TERMINAL and at < self.ended_before
        return True


def _labels(args: argparse.Namespace) -> dict[str, str]:
    return dict(parse_label(text) for text in args.label)


def rerun_selection(args: argparse.Namespace) -> Selection:
    labels = _labels(args)
    phases: tuple[str, ...] = ()
    if args.failed:
        phases = ("failed", "killed")
    elif labels or args.name is not None:
        phases = tuple(p for p in PHASES if p in TERMINAL)
    if not args.processes and not phases:
        raise ConfigError(
            "rerun: nothing to rerun; give names or ids, --failed, -l KEY=VALUE or --name"
        )
    return Selection(tuple(args.processes), phases, labels, name=args.name)


def rm_selection(args: argparse.Namespace, *, terminal: bool = False) -> Selection:
    """``terminal``: select the terminal processes even without a selector (a prune)."""
    labels = _labels(args)
    ended_before = None
    if args.ended_before is not None:
        ended_before = parse_moment(args.ended_before, "--ended-before", now=time.time())
    phases: tuple[str, ...] = ()
    if terminal or labels or ended_before is not None or args.name is not None:
        # (--kill widens a label or name selector to active processes; an end time never)
        phases = PHASES if args.kill and ended_before is None else tuple(TERMINAL)
    if not args.processes and not phases:
        raise ConfigError(
            "rm: nothing to remove; give names or ids, -l KEY=VALUE, --name or --ended-before"
        )
    return Selection(
        tuple(args.processes),
        tuple(p for p in PHASES if p in phases),
        labels,
        ended_before,
        name=args.name,
    )


def _listed(client: Client, selection: Selection) -> Iterator[str]:
    """The ids of the processes the selectors select (none without selectors), as the
    service lists them, a page at a time."""
    return _kept_out(lambda ended: _listed_by(client, selection, ended), selection)


def _listed_by(client: Client, selection: Selection, ended: bool) -> Iterator[str]:
    listing = selection.listing(ended=ended)
    params: dict[str, Any] = {
        "phase": list(listing.phases),
        "label": [f"{key}={value}" for key, value in listing.labels],
        "limit": _PAGE,
    }
    if listing.name is not None:
        params["name"] = listing.name
    if listing.ended_before is not None:  # (the service walks its end index)
        params["ended_before"] = listing.ended_before
    if listing.ended_after is not None:
        params["ended_after"] = listing.ended_after
    while True:
        _, page = client.call("GET", "/v1/processes", params=params)
        yield from (item["id"] for item in page["items"] if selection.matches(item, ended=ended))
        if page["next_cursor"] is None:
            return
        params["cursor"] = page["next_cursor"]


def _kept_out(ids: Callable[[bool], Iterator[str]], selection: Selection) -> Iterator[str]:
    """What ``ids(ended=False)`` selects, and with ``keep``, the start of ``ids(ended=True)``
    (every terminal process selected, in the order of the ends) but for its last ``keep``
    (what ended before ``ended_before`` is a start of the same order: the longer one)."""
    if not selection.phases:
        return iter(())
    if selection.keep is None:
        return ids(False)
    ended = list(ids(True))
    cut = max(0, len(ended) - selection.keep)
    if selection.ended_before is not None:
        cut = max(cut, sum(1 for _ in ids(False)))
    return iter(ended[:cut])


def _selected_here(manager: Any, selection: Selection) -> Iterator[str]:
    """The ids of the processes the selectors select (none without selectors), read from
    the store's indexes a page at a time: only the selected records are decoded."""
    return _kept_out(lambda ended: _selected_by(manager, selection, ended), selection)


def _selected_by(manager: Any, selection: Selection, ended: bool) -> Iterator[str]:
    listing, cursor = selection.listing(ended=ended), None
    while True:
        records, cursor, _ = _listing.read_records(
            manager.store, manager.codec, listing, cursor, _PAGE
        )
        yield from (record.id for record in records)
        if cursor is None:
            return


def _targets(named: list[str], selected: Iterator[str]) -> list[str]:
    """The named processes, then the selected ones, each once, in that order."""
    seen: dict[str, None] = dict.fromkeys(named)
    for key in selected:
        seen.setdefault(key, None)
    return list(seen)


# -- rerun ---------------------------------------------------------------------------------


def rerun(args: argparse.Namespace, state_dir: Path) -> int:
    selection = rerun_selection(args)
    output_limit = runtime_options(args)
    try:
        with service(args, state_dir) as client:
            return _rerun_through(client, selection, args)
    except NotServing:
        pass
    return trio.run(_rerun_here, state_dir, selection, args, output_limit)


def _rerun_through(client: Client, selection: Selection, args: argparse.Namespace) -> int:
    return _each_through(
        client,
        selection,
        args,
        lambda key: client.call("POST", f"/v1/processes/{quoted(key)}/rerun")[1],
        lambda record: f"rerun as attempt {record['attempt']}",
    )


async def _rerun_here(
    state_dir: Path, selection: Selection, args: argparse.Namespace, output_limit: int
) -> int:
    from corra.cli._run import foreground

    refused: list[str] = []

    async def start(manager: Any, _display: Any) -> list[str]:
        ids = []
        for key in _targets(list(selection.names), _selected_here(manager, selection)):
            try:
                record = await manager.rerun(key)
            except (NoSuchProcess, InvalidTransition) as exc:
                print(f"corra: {exc}", file=sys.stderr)
                refused.append(key)
                continue
            ids.append(record.id)
        return ids

    status = await foreground(
        state_dir,
        args,
        start,
        runtime={"max_running": args.max_running, "output_limit": output_limit},
    )
    return EXIT_FAILED if refused and status == EXIT_OK else status


# -- rm ------------------------------------------------------------------------------------


def rm(args: argparse.Namespace, state_dir: Path) -> int:
    selection = rm_selection(args)
    try:
        with service(args, state_dir) as client:
            return _rm_through(client, selection, args)
    except NotServing:
        pass
    return trio.run(_rm_here, state_dir, selection, args)


def _rm_through(client: Client, selection: Selection, args: argparse.Namespace) -> int:
    params = {"kill": "true"} if args.kill else None
    return _each_through(
        client,
        selection,
        args,
        lambda key: client.call("DELETE", f"/v1/processes/{quoted(key)}", params=params)[1],
        lambda _: "removed",
        hint=_KILL_HINT,
    )


def _each_through(
    client: Client,
    selection: Selection,
    args: argparse.Namespace,
    act: Callable[[str], dict[str, Any]],
    said: Callable[[dict[str, Any]], str],
    *,
    hint: str = "",
) -> int:
    """``act`` on each process ``selection`` names or selects, through the service: a
    process it does not know (404) or refuses (409, with ``hint``) is said and counted, the
    others are printed (``said``), or printed as JSON at the end."""
    done, refused = [], 0
    for key in _targets(list(selection.names), _listed(client, selection)):
        try:
            record = act(key)
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise
            print(f"corra: {exc}{hint if exc.status == 409 else ''}", file=sys.stderr)
            refused += 1
            continue
        done.append(record)
        if not args.json:
            print(f"{record['name']} ({record['id']}): {said(record)}")
    if args.json:
        print_json(done)
    return EXIT_FAILED if refused else EXIT_OK


async def _rm_here(state_dir: Path, selection: Selection, args: argparse.Namespace) -> int:
    from corra._runtime import open_runtime

    removed, refused = [], 0
    async with open_runtime(state_dir=state_dir) as rt:
        manager = rt.processes
        for key in _targets(list(selection.names), _selected_here(manager, selection)):
            try:
                record = await manager.remove(key, kill=args.kill)
            except (NoSuchProcess, InvalidTransition) as exc:
                hint = _KILL_HINT if isinstance(exc, InvalidTransition) else ""
                print(f"corra: {exc}{hint}", file=sys.stderr)
                refused += 1
                continue
            removed.append(record_json(record))
            if not args.json:
                print(f"{record.name} ({record.id}): removed")
    if args.json:
        print_json(removed)
    return EXIT_FAILED if refused else EXIT_OK


# -- prune ---------------------------------------------------------------------------------


def prune(args: argparse.Namespace, state_dir: Path) -> int:
    """``corra prune``: ``corra rm`` of every terminal process that ended before a time and
    of all but the ``--keep`` that ended last, in the runtime's own bounded batches (the
    service's, or one opened here); with labels or a name, as ``corra rm`` selects."""
    args.processes, args.kill = [], False
    if args.ended_before is None and args.keep is None:
        raise ConfigError("prune: give --ended-before TIME|DURATION, --keep N, or both")
    if args.keep is not None:
        check_count("--keep", args.keep)
    selection = attrs.evolve(rm_selection(args, terminal=True), keep=args.keep)
    try:
        with service(args, state_dir) as client:
            if selection.labels or selection.name is not None:
                return _rm_through(client, selection, args)
            params = {"ended_before": selection.ended_before, "keep": selection.keep}
            _, answer = client.call(
                "POST",
                "/v1/processes:prune",
                params={key: value for key, value in params.items() if value is not None},
            )
            _print_pruned(answer["removed"], args)
            return EXIT_OK
    except NotServing:
        pass
    if selection.labels or selection.name is not None:
        return trio.run(_rm_here, state_dir, selection, args)
    return trio.run(_prune_here, state_dir, selection, args)


async def _prune_here(state_dir: Path, selection: Selection, args: argparse.Namespace) -> int:
    from corra._runtime import open_runtime

    async with open_runtime(state_dir=state_dir) as rt:
        removed = await rt.processes.prune(selection.ended_before, keep=selection.keep)
    _print_pruned(removed, args)
    return EXIT_OK


def _print_pruned(removed: int, args: argparse.Namespace) -> None:
    if args.json:
        print_json({"removed": removed})
    else:
        print(f"removed {removed} process(es)")
