"""A test backend plug-in, ``noting``: local programs that say where they are.

It runs programs as the local backend does (its own run dirs, ``<state dir>/noting``) and
gives each program ``NOTE_FILE``, a path under the state dir: while the backend waits for the
program, whatever the program writes there is its note (`BackendContext.notes`), and a
missing or empty file clears it, as a Kubernetes backend says "unschedulable: ..." while
the scheduler cannot place a pod and clears it once the pod runs.

Importable in the tests' own interpreter (tests/ is on sys.path), and copied into a site
directory with an entry point for ``corra`` subprocesses (`site_with_noting`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import trio

from corra.backends.local import Handle, LocalBackend
from corra.processes._backend import BackendContext, BackendPlugin, EffectKey, LaunchRequest

#: How often the backend reads a waited-for program's note file.
POLL = 0.05


class NotingBackend:
    """`LocalBackend` (every method but ``launch`` and ``wait`` is its), with notes."""

    capabilities = LocalBackend.capabilities
    handle_type = Handle

    def __init__(self, local: LocalBackend, context: BackendContext) -> None:
        self.local = local
        self.context = context
        self.notes_dir = context.state_dir / "noting-notes"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)

    def note_file(self, key: EffectKey) -> Path:
        return self.notes_dir / str(key)

    async def launch(self, request: LaunchRequest) -> Handle:
        self.notes_dir.mkdir(mode=0o700, exist_ok=True)
        env = {**request.env, "NOTE_FILE": str(self.note_file(request.key))}
        handle: Handle = await self.local.launch(attrs.evolve(request, env=env))
        return handle

    async def wait(self, handle: Handle) -> Any:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch, EffectKey.parse(handle.key))
            result = await self.local.wait(handle)
            nursery.cancel_scope.cancel()
        return result

    async def _watch(self, key: EffectKey) -> None:
        path = self.note_file(key)
        said: object = object()
        while True:
            try:
                text: str | None = path.read_text() or None
            except FileNotFoundError:
                text = None
            if text != said:
                self.context.notes.set(key, text)
                said = text
            await trio.sleep(POLL)


@contextlib.asynccontextmanager
async def open_noting(context: BackendContext) -> AsyncIterator[NotingBackend]:
    async with LocalBackend(
        context.state_dir / "noting",
        max_running=context.max_running,
        output_limit=context.output_limit,
    ) as local:
        yield NotingBackend(local, context)


PLUGIN = BackendPlugin(
    name="noting",
    open=open_noting,
    handle=Handle,
    capabilities=NotingBackend.capabilities,
    description="local programs whose NOTE_FILE is their note (a test plug-in)",
)


def site_with_noting(site: Path) -> Path:
    """``site``, made a directory that holds this plug-in as installed (its module and a
    dist-info with its entry point), for ``PYTHONPATH``."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "_noting.py").write_text(Path(__file__).read_text())
    info = site / "corra_noting-0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: corra-noting\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[corra.backends]\nnoting = _noting:PLUGIN\n")
    return site
