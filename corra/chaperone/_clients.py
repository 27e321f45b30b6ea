"""The shared chaperone's connections: runtimes on its Unix socket, JSON lines each way (see
`protocol`). Connections from other users are refused; each request line is taken off the
connection before it is handled; what a client is sent is queued and sent once per round of
the loop."""

import json
import os
import selectors
import socket
import sys

from . import protocol
from ._rundir import ROOT_VARIABLE, save_env, unlink
from .protocol import json_line, shown

#: Longest request line the shared chaperone accepts.
MAX_REQUEST = 64 << 20


class Client:
    """One runtime's connection."""

    def __init__(self, sock):
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.env = None
        self.env_file = None
        self.umask = None  # the runtime's, for its programs
        self.runs = set()  # runs it is subscribed to
        self.writing = False

    def hello(self, request, root):
        """Take the environment (``.env-<sha1>.json`` in ``root``) and umask its programs
        start with from a ``hello`` (no env: the chaperone's own)."""
        env = request.get("env")
        if env is None:
            env = dict(os.environ)
            env.pop(ROOT_VARIABLE, None)
        self.env = protocol.check_env(env)
        self.env_file = save_env(root, env)
        umask = request.get("umask")
        ok = isinstance(umask, int) and not isinstance(umask, bool) and 0 <= umask <= 0o777
        self.umask = umask if ok else None


class Clients:
    """The listener and every connection; ``handle(client, request)`` answers a request (a
    dict), ``guarded(function, *arguments)`` calls a step so that a bug there costs that step
    only."""

    def __init__(self, selector, listener, handle, guarded):
        self.selector = selector
        self.listener = listener
        self.handle = handle
        self.guarded = guarded
        self.connected = {}  # socket -> Client
        self.unsent = set()  # clients with messages queued
        listener.setblocking(False)
        selector.register(listener, selectors.EVENT_READ, self.on_connect)

    def __bool__(self):
        return bool(self.connected)

    def all(self):
        return list(self.connected.values())

    def on_connect(self, listener, mask):
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # out of fds, say: the client sees its connection refused or reset
            self.add(sock)

    def accept_one(self):
        """Whether a client came in just now (taken in)."""
        try:
            sock, _ = self.listener.accept()
            self.add(sock)
        except OSError:
            return False
        return True

    def add(self, sock):
        credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        if int.from_bytes(credentials[4:8], sys.byteorder) not in (0, os.getuid()):
            sock.close()
            return
        sock.setblocking(False)
        client = Client(sock)
        self.connected[sock] = client
        self.selector.register(sock, selectors.EVENT_READ, self.on_client)

    def on_client(self, sock, mask):
        client = self.connected.get(sock)
        if client is None:
            return
        if mask & selectors.EVENT_WRITE:
            self.flush(client)
        if not mask & selectors.EVENT_READ:
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.drop(client)
            return
        end = data.rfind(b"\n")  # in what came now: a long line is looked through once
        if end < 0:
            client.inbox += data
            if len(client.inbox) > MAX_REQUEST:
                self.drop(client)
            return
        # Taken out of the inbox before any is handled: each line is handled once, whatever
        # happens while it is.
        lines = bytes(client.inbox + data[:end]).split(b"\n")
        client.inbox = bytearray(data[end + 1 :])
        for line in lines:
            if client.sock is None:
                return
            self.guarded(self.on_line, client, line)

    def on_line(self, client, line):
        """One request: a reply to it, whatever it is (a bug costs it an ``error`` reply)."""
        try:
            request = json.loads(line)
        except (ValueError, RecursionError) as error:
            self.reply(client, None, protocol.INVALID, error=f"not JSON: {error}")
            return
        if not isinstance(request, dict):
            error = f"expected a JSON object, got {shown(request)}"
            self.reply(client, None, protocol.INVALID, error=error)
            return
        try:
            self.handle(client, request)
        except Exception as error:
            self.reply(client, request.get("id"), protocol.ERROR, error=f"{error!r}")
            raise  # to the log

    def reply(self, client, request_id, word, **fields):
        """Send ``{"id": request_id, "op": word, **fields}``."""
        message = {"id": request_id, protocol.OP: word}
        message.update(fields)
        self.send(client, message)

    def send(self, client, message):
        """Queue ``message`` (or a line already encoded); the loop sends what a client has
        queued once per round (`flush_all`)."""
        if client.sock is None:
            return
        client.outbox += message if isinstance(message, bytes) else json_line(message)
        if not client.writing:
            self.unsent.add(client)

    def flush_all(self):
        while self.unsent:
            client = self.unsent.pop()
            if client.sock is not None and not client.writing:
                self.flush(client)

    def flush(self, client):
        try:
            sent = client.sock.send(client.outbox)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.drop(client)
            return
        del client.outbox[:sent]
        writing = bool(client.outbox)
        if writing != client.writing:
            client.writing = writing
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
            self.selector.modify(client.sock, events, self.on_client)

    def drop(self, client):
        """Forget a connection; its programs run on."""
        if client.sock is None:
            return
        self.selector.unregister(client.sock)
        self.connected.pop(client.sock, None)
        client.sock.close()
        client.sock = None
        for run in client.runs:
            run.subscribers.discard(client)
        client.runs.clear()

    def close(self):
        """Stop listening (the socket removed first, so that a runtime arriving now starts a
        new chaperone), and drop every connection."""
        address = self.listener.getsockname()
        if isinstance(address, bytes):
            address = os.fsdecode(address)
        if address and not address.startswith("\0"):
            unlink(address)
        self.listener.close()
        for client in self.all():
            self.drop(client)


def subscribe(client, run):
    """Tell ``client`` of ``run``'s exit."""
    run.subscribers.add(client)
    client.runs.add(run)
