"""Talking to a running service: ``submit``, ``pause``, ``resume`` and ``kill`` over the HTTP
client, through the service's Unix socket in the state dir or at ``--url``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from corra._errors import ConfigError, CorraError
from corra.api._client import ApiError, Client, NotServing, connect, no_service_message
from corra.api._limits import MAX_BATCH, MAX_BODY
from corra.cli._parser import EXIT_FAILED, EXIT_NO_SERVICE, EXIT_OK, TOKEN_ENV, URL_ENV, parse_label
from corra.cli._render import print_control, print_json
from corra.processes._convert import parse_process_spec, unstructure_spec
from corra.processes._spec import ProcessSpec


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "url": getattr(args, "url", None) or os.environ.get(URL_ENV) or None,
        "token": getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or None,
        "token_file": getattr(args, "token_file", None),
        "cacert": getattr(args, "cacert", None),
    }


@contextlib.contextmanager
def service(args: argparse.Namespace, state_dir: Path) -> Iterator[Client]:
    """A client of the service (`NotServing` if there is none; with --url, an error)."""
    options = _client_options(args)
    try:
        with connect(state_dir, **options) as client:
            yield client
    except NotServing as exc:
        if options["url"]:
            raise CorraError(f"cannot reach the service at {options['url']}: {exc}") from None
        raise


def quoted(process: str) -> str:
    """An id or a name, as a path segment of a URL."""
    return urllib.parse.quote(process, safe="")


def submit(args: argparse.Namespace, state_dir: Path) -> int:
    from corra._jobfile import load_job_file

    argv = list(args.argv)
    if args.jobfile and (args.name or args.label):
        raise ConfigError(
            "submit: --name and --label go with `-- ARGV...`; a job file says its own"
        )
    if args.jobfile and argv:
        raise ConfigError("submit: give a job file or `-- ARGV...`, not both")
    bodies: list[dict[str, Any]] = []
    if args.jobfile:
        job = load_job_file(args.jobfile)
        if job.hosts:
            print(
                "corra submit: note: the job file's [hosts] are not sent; the service knows "
                "the hosts it was started with (remembered in its state dir)",
                file=sys.stderr,
            )
        bodies = [_absolute(spec) for spec in job.processes]
    elif argv:
        fields: dict[str, Any] = {"argv": argv}
        if args.name:
            fields["name"] = args.name
        if args.label:
            fields["labels"] = dict(parse_label(text) for text in args.label)
        bodies = [_absolute(parse_process_spec(fields, "argv"))]
    else:
        raise ConfigError("submit: nothing to submit; give a job file or `-- ARGV...`")
    try:
        with service(args, state_dir) as client:
            records, refused = [], 0
            for batch in _batches(bodies):
                _, answer = client.call("POST", "/v1/processes:batch", body={"processes": batch})
                for record in answer["items"]:
                    created = record.pop("created")
                    changed = record.pop("changed", None)
                    if changed:  # (the others are submitted)
                        print(
                            f"corra: process {record['name']!r} ({record['id']}) exists with "
                            f"another spec: {', '.join(changed)} differ; it keeps its own",
                            file=sys.stderr,
                        )
                        refused += 1
                        continue
                    records.append(record)
                    if not args.json:
                        what = "submitted" if created else f"exists already ({record['phase']})"
                        print(f"{record['name']} ({record['id']}): {what}")
    except NotServing:
        print(f"corra: {no_service_message(state_dir)}", file=sys.stderr)
        print("corra: (or run it in the foreground: `corra run`)", file=sys.stderr)
        return EXIT_NO_SERVICE
    if args.json:
        print_json(records)
    return EXIT_FAILED if refused else EXIT_OK


def _batches(bodies: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """``bodies`` in order, in batches the API takes: at most `MAX_BATCH` specs, and well
    under `MAX_BODY` bytes of JSON each (a job file of thousands is a few requests)."""
    batch: list[dict[str, Any]] = []
    size = 0
    for body in bodies:
        length = len(json.dumps(body)) + 1
        if batch and (len(batch) == MAX_BATCH or size + length > MAX_BODY // 2):
            yield batch
            batch, size = [], 0
        batch.append(body)
        size += length
    if batch:
        yield batch


def _absolute(spec: ProcessSpec) -> dict[str, Any]:
    """A spec as the API takes it: local paths made absolute here, where they were meant."""
    data = unstructure_spec(spec)
    if spec.backend == "local" and spec.cwd is not None:
        data["cwd"] = os.path.abspath(spec.cwd)
    if spec.outputs_dir is not None:
        data["outputs_dir"] = os.path.abspath(spec.outputs_dir)
    data["inputs"] = {remote: os.path.abspath(local) for remote, local in spec.inputs.items()}
    return data


def control(
    args: argparse.Namespace,
    state_dir: Path,
    run: Callable[[Client, str, str, argparse.Namespace], int] | None = None,
) -> int:
    """``pause``, ``resume`` or ``kill`` (``args.command``) of one process; ``run``: what
    does it to a workflow run instead, for a name or id no process has (and for
    ``--accept``, which only a run takes)."""
    verb = args.command
    params = {"wait": "false"} if verb == "kill" and args.no_wait else None
    try:
        with service(args, state_dir) as client:
            if run is not None and getattr(args, "accept", False):
                return run(client, args.process, verb, args)
            try:
                _, record = client.call(
                    "POST", f"/v1/processes/{quoted(args.process)}/{verb}", params=params
                )
            except ApiError as exc:
                if exc.status != 404 or run is None:
                    raise
                try:  # (no such process: a run?)
                    return run(client, args.process, verb, args)
                except ApiError as missing:
                    if missing.status == 404:
                        raise exc from None
                    raise
    except NotServing:
        print(f"corra: {no_service_message(state_dir)}", file=sys.stderr)
        return EXIT_NO_SERVICE
    print_control(record, args.json)
    return EXIT_OK
