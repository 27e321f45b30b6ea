"""What the ssh backend keeps of each host: its transport, where corra's package and run dirs
are there, and the waits its poller settles (`corra.backends.ssh._programs`)."""

from __future__ import annotations

import hashlib
import posixpath
from pathlib import Path
from typing import Any

import attrs
import trio

from corra.backends.ssh._config import HostConfig
from corra.backends.transport import Transport
from corra.chaperone import PACKAGE_DIR

#: Where the uploaded package lives under a host's library dir, and the file whose size says
#: that an upload finished (the last one written).
PACKAGE = "chaperone"


def library() -> tuple[str, dict[str, bytes]]:
    """The files of the host-side package (`corra.chaperone`), as paths under the library dir
    (``chaperone/<module>.py``), written in this order; and a digest of them all."""
    package = Path(PACKAGE_DIR)
    files = {f"{PACKAGE}/{path.name}": path.read_bytes() for path in sorted(package.glob("*.py"))}
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name] + b"\0")
    return digest.hexdigest()[:16], files


@attrs.define
class Watch:
    run_dir: str
    limit: int
    """The program's output limit: no more of a stream is shipped."""
    event: trio.Event = attrs.field(factory=trio.Event)
    status: dict[str, Any] | None = None
    error: BaseException | None = None


class Host:
    """What the backend knows of one host: its transport, paths, and its poller's watches."""

    def __init__(self, config: HostConfig, transport: Transport, poll_interval: float) -> None:
        self.config = config
        self.transport = transport
        self.poll_interval = poll_interval
        self.lib_dir: str | None = None
        self.work_root: str | None = None
        self.setup_lock = trio.Lock()
        self.watches: dict[str, list[Watch]] = {}
        self.wake = trio.Event()
        self.polls = 0
        #: Run dirs whose exited program's logs are being shipped before its waits settle.
        self.finishing: set[str] = set()

    @property
    def helper(self) -> list[str]:
        assert self.lib_dir is not None
        package = posixpath.join(self.lib_dir, PACKAGE)
        return [self.config.python, "-I", "-S", package, "--helper"]


def settle(host: Host, status: dict[str, Any]) -> None:
    """Hand an exited (or lost) program's status to every wait on its run dir."""
    for watch in host.watches.get(status["dir"], []):
        watch.status = status
        watch.event.set()
