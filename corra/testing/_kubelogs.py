"""The stand-in node's container logs and the kubelet's log endpoint that serves them.

A container's output (stdout and stderr through one pipe, so interleaved as written) is kept
in memory as lines, each stamped with the time it was read, as a container runtime's log
file keeps it. `serve_container_logs` answers the kubelet's
``GET /containerLogs/{namespace}/{pod}/{container}`` over HTTPS (a self-signed certificate
made at start: the apiserver of the test cluster does not check it), interpreting the query
as the kubelet 1.20 does (``pkg/kubelet/kuberuntime/logs``):

- ``tailLines=N``: start N lines before the end (first, before any other option);
- ``sinceTime`` (RFC 3339) / ``sinceSeconds``: skip lines stamped before that time;
- ``timestamps=true``: prefix each line with its time and a space, in the kubelet's
  ``RFC3339NanoFixed`` (UTC, always nine digits of the fraction: `format_log_time`);
- ``limitBytes=N``: stop after N bytes, prefixes counted, cutting the last line;
- ``follow=true``: after the lines there are, send new ones as they are read, until the
  container has ended (then the response ends).

A line longer than `MAX_LINE` is split as containerd splits it (partial entries, CRI tag
``P``), and the program's unfinished last line is one too; as the kubelet, the endpoint does
not join them: each is sent with its own time, without a newline.

The apiserver proxies ``pods/{pod}/log`` here (it reaches the node at its InternalIP and
``daemonEndpoints.kubeletEndpoint.Port``).
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
import h11
import trio

#: The most bytes of lines sent at once (one per line: a Python kubelet at 5,000 lines/s).
CHUNK = 64 * 1024
#: Lines longer than this are split, as a container runtime splits them (partial lines).
MAX_LINE = 16 * 1024


def format_time(nanoseconds: int) -> str:
    """A time (nanoseconds since the epoch) as Go's ``time.RFC3339Nano`` writes it in UTC."""
    seconds, fraction = divmod(nanoseconds, 1_000_000_000)
    text = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:09d}".rstrip("0")
    return f"{text}.{digits}Z" if digits else f"{text}Z"


def format_log_time(nanoseconds: int) -> str:
    """A time as the kubelet stamps log lines: Go's ``RFC3339NanoFixed`` in UTC (nine digits
    of the fraction, always: ``pkg/kubelet/kuberuntime/logs``' ``timeFormatOut``)."""
    seconds, fraction = divmod(nanoseconds, 1_000_000_000)
    text = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{fraction:09d}Z"


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def parse_time(text: str) -> int:
    """An RFC 3339 time (any fraction of a second, to nanoseconds) as nanoseconds since the
    epoch. Raises ValueError if it is not one."""
    match = _RFC3339.match(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    whole, fraction, zone = match.groups()
    zone = "+00:00" if zone == "Z" else zone
    seconds = datetime.datetime.fromisoformat(whole + zone).timestamp()
    return int(seconds) * 1_000_000_000 + int((fraction or "").ljust(9, "0"))


@attrs.frozen
class LogLine:
    """One line of output (with its newline, unless it was the unfinished last one)."""

    time: int  #: nanoseconds since the epoch, when the node read it
    data: bytes


@attrs.define
class ContainerLog:
    """The output of one container: lines so far, and whether the container has ended."""

    lines: list[LogLine] = attrs.field(factory=list)
    ended: bool = False
    _partial: bytes = b""
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def feed(self, data: bytes) -> None:
        """Take what the program wrote; complete lines become lines, stamped now."""
        buffer = self._partial + data
        start = 0  # (lines are cut from here on: one copy of the rest at the end, not per line)
        while True:
            end = buffer.find(b"\n", start, start + MAX_LINE)
            if end < 0 and len(buffer) - start < MAX_LINE:
                break
            cut = end + 1 if end >= 0 else start + MAX_LINE
            self.lines.append(LogLine(time.time_ns(), buffer[start:cut]))
            start = cut
        self._partial = buffer[start:]
        self._notify()

    def end(self) -> None:
        """The container has ended: an unfinished last line becomes a line."""
        if self._partial:
            self.lines.append(LogLine(time.time_ns(), self._partial))
            self._partial = b""
        self.ended = True
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_beyond(self, count: int) -> None:
        """Wait until there are more than ``count`` lines, or the container has ended."""
        while len(self.lines) <= count and not self.ended:
            await self._changed.wait()


@attrs.frozen
class LogQuery:
    """The options of one request to the log endpoint."""

    follow: bool = False
    timestamps: bool = False
    since: int | None = None  #: nanoseconds since the epoch
    tail_lines: int | None = None
    limit_bytes: int | None = None

    @classmethod
    def from_query(cls, query: str) -> LogQuery:
        """Parse a query string; raises ValueError (the kubelet answers 400)."""
        values = {key: found[-1] for key, found in parse_qs(query).items()}
        since = None
        if "sinceTime" in values:
            since = parse_time(values["sinceTime"])
        elif "sinceSeconds" in values:
            since = time.time_ns() - int(values["sinceSeconds"]) * 1_000_000_000
        tail = values.get("tailLines")
        limit = values.get("limitBytes")
        return cls(
            follow=values.get("follow") == "true",
            timestamps=values.get("timestamps") == "true",
            since=since,
            tail_lines=None if tail is None else max(0, int(tail)),
            limit_bytes=None if limit is None else int(limit),
        )

    async def lines(self, log: ContainerLog):  # type: ignore[no-untyped-def]
        """The bytes to send for ``log``, chunk by chunk (an async generator): the lines
        there are in chunks of up to `CHUNK` bytes, then (following) each as it comes."""
        index = len(log.lines) - self.tail_lines if self.tail_lines is not None else 0
        index = max(0, index)
        remaining = self.limit_bytes
        while True:
            chunk: list[bytes] = []
            size = 0
            for line in log.lines[index:]:
                index += 1
                if self.since is not None and line.time < self.since:
                    continue
                data = line.data
                if self.timestamps:
                    data = format_log_time(line.time).encode() + b" " + data
                if remaining is not None:
                    data = data[:remaining]
                    remaining -= len(data)
                chunk.append(data)
                size += len(data)
                if remaining is not None and remaining <= 0:
                    yield b"".join(chunk)
                    return
                if size >= CHUNK:
                    yield b"".join(chunk)
                    chunk, size = [], 0
            if chunk:
                yield b"".join(chunk)
            if not self.follow or (log.ended and index >= len(log.lines)):
                return
            await log.wait_beyond(index)


class LogError(Exception):
    """A request the kubelet refuses: its status and text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


#: Finds a container's log, or raises LogError as the kubelet would (404: no such pod or
#: container; 400: the container has not started, with the reason it waits).
LogFinder = Callable[[str, str, str], ContainerLog]


def self_signed_context(directory: Path, host: str = "127.0.0.1") -> ssl.SSLContext:
    """A server TLS context with a new self-signed certificate for ``host`` (files in
    ``directory``, which the context has read when this returns)."""
    # Imported here: only the node needs it (cryptography comes with asyncssh).
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corra-test-node")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "kubelet.crt", directory / "kubelet.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


async def serve_container_logs(
    find: LogFinder,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the kubelet's log endpoint over HTTPS until cancelled.

    Reports the port it listens on through ``task_status`` (use ``nursery.start``).
    trio's socket streams set TCP_NODELAY, so followed lines are not held back by Nagle.
    """
    with tempfile.TemporaryDirectory(prefix="corra-kubelet-") as directory:
        context = self_signed_context(Path(directory), host)
    listeners = await trio.open_ssl_over_tcp_listeners(port, context, host=host)
    bound = listeners[0].transport_listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, _handler(find), listeners)
        task_status.started(bound)


def _handler(find: LogFinder):  # type: ignore[no-untyped-def]
    async def handle(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await _serve_one(stream, find)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass  # the apiserver left (a client stopped following), or spoke nonsense
        finally:
            await trio.aclose_forcefully(stream)

    return handle


async def _serve_one(stream: trio.SSLStream[trio.SocketStream], find: LogFinder) -> None:
    """One request per connection (``Connection: close``): a follow holds it anyway."""
    connection = h11.Connection(h11.SERVER)
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await stream.receive_some(65536))
            continue
        if isinstance(event, h11.Request):
            break
        return
    target = urlsplit(event.target.decode())
    parts = [unquote(part) for part in target.path.split("/")]

    async def send(event: h11.Event) -> None:
        await stream.send_all(connection.send(event) or b"")

    def head(status: int) -> h11.Response:
        headers = [("Content-Type", "text/plain"), ("Connection", "close")]
        return h11.Response(status_code=status, headers=headers)

    try:
        if len(parts) != 5 or parts[1] != "containerLogs" or event.method != b"GET":
            raise LogError(404, f"no such endpoint on this test node: {target.path}")
        try:
            query = LogQuery.from_query(target.query)
        except ValueError as error:
            raise LogError(400, f"bad log options: {error}") from None
        log = find(parts[2], parts[3], parts[4])
    except LogError as error:
        await send(head(error.status))
        await send(h11.Data(data=f"{error}\n".encode()))
        await send(h11.EndOfMessage())
        return
    await send(head(200))
    async with trio.open_nursery() as nursery:
        # The apiserver closes its connection when its client leaves a follow: notice it
        # while waiting for lines, instead of at the next line (maybe never).
        nursery.start_soon(_cancel_on_close, stream, nursery.cancel_scope)
        async for chunk in query.lines(log):
            if chunk:
                await send(h11.Data(data=chunk))
        await send(h11.EndOfMessage())
        nursery.cancel_scope.cancel()


async def _cancel_on_close(stream: trio.abc.ReceiveStream, scope: trio.CancelScope) -> None:
    try:
        while await stream.receive_some(4096):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()
