"""Files to and from a program's work dir on a host, through a `Transport`.

Inputs (``{remote path relative to the work dir: local file or directory}``): the tree is
built locally first (every file, its size and sha256; nothing leaves the work dir: no
absolute path, no ``..``), then created on the host, uploaded, and verified by size and sha256
there; a file that does not match is uploaded once more, then the launch fails. Outputs (globs
relative to the work dir): the matching files (never one outside it, even through a symlink)
are fetched into a local directory, under the same relative paths.

The host-side checks are small standard-library scripts run with the host's ``python3`` (3.6
syntax), one command for all the files, whatever their number.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import trio

from corra._errors import BackendError, LaunchFailed, RemotePathError
from corra.backends._shared import json_reply
from corra.backends.transport import Transport, join_inside
from corra.processes._backend import LaunchRequest

#: ``python3 -c DIGESTS ROOT REL...``: ``{rel: [size, sha256] or null}`` of files under ROOT.
DIGESTS = r"""
import hashlib, json, os, sys
root = os.path.realpath(sys.argv[1])
out = {}
for relative in sys.argv[2:]:
    path = os.path.realpath(os.path.join(root, relative))
    if not path.startswith(root + os.sep) or not os.path.isfile(path):
        out[relative] = None
        continue
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    out[relative] = [os.path.getsize(path), digest.hexdigest()]
sys.stdout.write(json.dumps(out) + "\n")
"""

#: ``python3 -c OUTPUTS ROOT GLOB...``: sorted relative paths of the files matching the globs.
OUTPUTS = r"""
import glob, json, os, sys
root = os.path.realpath(sys.argv[1])
found = set()
for pattern in sys.argv[2:]:
    for path in glob.glob(os.path.join(root, pattern), recursive=True):
        real = os.path.realpath(path)
        if os.path.isfile(real) and real.startswith(root + os.sep):
            found.add(os.path.relpath(path, root))
sys.stdout.write(json.dumps(sorted(found)) + "\n")
"""


def local_tree(inputs: Mapping[str, str]) -> dict[str, tuple[str, int, str]]:
    """``{remote relative path: (local file, size, sha256)}`` for every file of the inputs (a
    directory brings all the files under it). Blocking: run it in a thread.

    Raises:
        LaunchFailed: a remote path leaves the work dir, or a local path does not exist.
    """
    tree: dict[str, tuple[str, int, str]] = {}
    for relative, local in inputs.items():
        try:
            join_inside("/", relative)  # before any reading
        except RemotePathError as exc:
            raise LaunchFailed(f"inputs: {exc}") from None
        source = Path(local)
        if source.is_dir():
            files = [
                (f"{relative}/{path.relative_to(source).as_posix()}", path)
                for path in sorted(source.rglob("*"))
                if path.is_file()
            ]
        elif source.is_file():
            files = [(relative, source)]
        else:
            raise LaunchFailed(f"inputs[{relative!r}]: no such local file or directory: {local!r}")
        for name, path in files:
            digest = hashlib.sha256()
            with path.open("rb") as file:
                for block in iter(lambda file=file: file.read(1 << 20), b""):
                    digest.update(block)
            tree[name] = (str(path), path.stat().st_size, digest.hexdigest())
    return tree


async def upload(
    transport: Transport, python: str, work_dir: str, inputs: Mapping[str, str], where: str
) -> None:
    """Send ``inputs`` into ``work_dir`` and verify them there (see the module doc).

    Raises:
        LaunchFailed: a bad path, a missing local file, or a file that does not arrive intact.
    """
    tree = await trio.to_thread.run_sync(local_tree, inputs)
    targets = {relative: join_inside(work_dir, relative) for relative in tree}
    await transport.mkdir(work_dir)
    for directory in sorted({target.rsplit("/", 1)[0] for target in targets.values()}):
        await transport.mkdir(directory)
    pending = sorted(tree)
    for _ in range(2):
        for relative in pending:
            await transport.put(tree[relative][0], targets[relative])
        remote = await _json(transport, [python, "-I", "-S", "-c", DIGESTS, work_dir, *pending])
        pending = [
            relative for relative in pending if remote.get(relative) != list(tree[relative][1:])
        ]
        if not pending:
            return
    raise LaunchFailed(
        f"inputs on {where}: {', '.join(pending)} did not arrive intact (size or sha256 differ "
        "after two uploads)"
    )


async def retrieve(
    transport: Transport,
    python: str,
    work_dir: str,
    patterns: Sequence[str],
    destination: str,
) -> list[str]:
    """Fetch the files of ``work_dir`` matching ``patterns`` into ``destination``; returns
    their relative paths."""
    found = await _json(transport, [python, "-I", "-S", "-c", OUTPUTS, work_dir, *patterns])
    if not isinstance(found, list):
        raise BackendError(f"outputs of {work_dir}: an answer that is not a list: {found!r}")
    fetched = []
    for relative in found:
        target = Path(destination) / join_inside(".", relative)
        await trio.to_thread.run_sync(
            lambda path=target: path.parent.mkdir(parents=True, exist_ok=True)
        )
        await transport.get(join_inside(work_dir, relative), str(target))
        fetched.append(relative)
    return fetched


class Outputs(Protocol):
    """The fields of a handle that says which outputs to fetch (`output_fields`)."""

    outputs: tuple[str, ...]
    outputs_to: str | None
    work_dir: str | None


def output_fields(request: LaunchRequest, run_dir: str) -> dict[str, Any]:
    """The fields (`Outputs`) a handle keeps to fetch the request's outputs after the end
    (none without any: the handle's defaults)."""
    if not request.outputs:
        return {}
    return {
        "outputs": tuple(request.outputs),
        "outputs_to": str(request.outputs_dir or ""),
        "work_dir": request.cwd or posixpath.join(run_dir, "work"),
    }


async def retrieve_outputs(transport: Transport, python: str, handle: Outputs) -> None:
    """Fetch the outputs that ``handle`` names (`output_fields`), if it names any."""
    if handle.outputs and handle.outputs_to and handle.work_dir:
        await retrieve(transport, python, handle.work_dir, handle.outputs, handle.outputs_to)


async def _json(transport: Transport, argv: list[str]) -> object:
    result = await transport.run(argv, check=True)
    return json_reply(result.stdout, f"{argv[0]} on {transport.host}")
