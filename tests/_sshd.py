"""A real OpenSSH sshd on loopback for the tests, with its own keys, config and user.

`SshdFactory.start` writes a config into a scratch dir, starts ``/usr/sbin/sshd -D -e`` on a
free port (absolute path: sshd re-execs itself), waits for its banner and returns an `Sshd`
that knows its pid, port, client key, known_hosts file and log. Every sshd started is stopped
by its pid when the session ends.

As root, logins go to a dedicated user whose shell is ``/bin/sh`` (root's shell start-up files
on these machines cost ~85 ms per command); the account is created once and unlocked with
``usermod -p '*'`` (sshd refuses a locked account when PAM is off). As another user, sshd runs
as that user and only that user can log in. Authorized keys come from ``AuthorizedKeysCommand
/bin/cat`` because sshd reads them as the target user, who cannot read pytest's 0700 tmp dirs.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import attrs

from corra.backends.ssh import HostConfig, PoolSettings

SSHD = "/usr/sbin/sshd"
TEST_USER = "corrassh"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unavailable() -> str | None:
    """Why no sshd can be started here, or None."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is missing (apt-get install openssh-server)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen is missing (apt-get install openssh-client)"
    if os.getuid() == 0 and shutil.which("useradd") is None:
        return "useradd is missing: cannot create the test user"
    return None


def _login_user() -> str:
    if os.getuid() != 0:
        return pwd.getpwuid(os.getuid()).pw_name
    try:
        entry = pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", TEST_USER], check=True)
        entry = pwd.getpwnam(TEST_USER)
    subprocess.run(["usermod", "-p", "*", TEST_USER], check=True)
    if entry.pw_shell != "/bin/sh":
        subprocess.run(["usermod", "-s", "/bin/sh", TEST_USER], check=True)
    return TEST_USER


@attrs.define
class Sshd:
    """One running sshd."""

    directory: Path
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    log: Path
    process: subprocess.Popen[bytes]
    host: str = "127.0.0.1"

    @property
    def pid(self) -> int:
        return self.process.pid

    def host_config(self, name: str, *, pool: object = None, **fields: object) -> HostConfig:
        """A corra host that reaches this server (its address, user, key and known_hosts),
        with ``fields`` of `HostConfig` and ``pool``: a `PoolSettings` or a dict of them."""
        settings = pool if isinstance(pool, PoolSettings) else PoolSettings(**(pool or {}))
        return HostConfig(
            name=name,
            hostname=self.host,
            port=self.port,
            user=self.user,
            identity_file=str(self.client_key),
            known_hosts=str(self.known_hosts),
            pool=settings,
            **fields,  # type: ignore[arg-type]
        )

    def logins(self) -> int:
        """Successful logins so far, from the VERBOSE log ("Accepted publickey")."""
        return self.log.read_text(errors="replace").count("Accepted publickey")

    def connection_pids(self) -> list[int]:
        """The per-connection sshd processes (children of the listener)."""
        return [pid for pid, parent in _parents().items() if parent == self.pid]

    def kill_connection(self, pid: int) -> None:
        """SIGKILL one connection's processes (its monitor and what it forked): the client
        sees its connection drop."""
        parents = _parents()
        doomed = {pid}
        while True:
            more = {child for child, parent in parents.items() if parent in doomed} - doomed
            if not more:
                break
            doomed |= more
        # Stopped first, all of them: killed one by one, a session process still alive could
        # report its command's death (exit-signal KILL) before its own, a clean-looking end.
        for victim in doomed:
            _signal(victim, signal.SIGSTOP)
        for victim in doomed:
            _signal(victim, signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM the listener and its connections (by pid), then wait for it."""
        if self.process.poll() is not None:
            return
        for pid in self.connection_pids():
            _signal(pid, signal.SIGTERM)
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def restart(self) -> None:
        """Start the same sshd again (same port, keys and config) after `stop`."""
        self.process = _launch(self.directory, self.port)


def _parents() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    return parents


def _signal(pid: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, number)


def _launch(directory: Path, port: int) -> subprocess.Popen[bytes]:
    log = open(directory / "sshd.log", "ab")  # noqa: SIM115 - the child keeps it
    try:
        process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(directory / "sshd_config")],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    finally:
        log.close()
    deadline = time.monotonic() + 10
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"sshd exited with {process.returncode}: "
                + (directory / "sshd.log").read_text(errors="replace")[-2000:]
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(4).startswith(b"SSH-"):
                    return process
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"sshd on port {port} did not answer within 10 s")
        time.sleep(0.02)


class SshdFactory:
    """Starts sshds with extra config lines; stops them all at `close`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[Sshd] = []
        self._user: str | None = None

    def start(self, options: Iterable[str] = (), *, name: str = "sshd") -> Sshd:
        if self._user is None:
            if os.getuid() == 0:
                os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
            self._user = _login_user()
        directory = self.root / f"{name}-{len(self.started)}"
        directory.mkdir(parents=True)
        for key in ("host_key", "client_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / key)],
                check=True,
            )
        shutil.copy(directory / "client_key.pub", directory / "authorized_keys")
        os.chmod(directory / "authorized_keys", 0o644)
        port = free_port()
        host_key = (directory / "host_key.pub").read_text().split()
        known_hosts = directory / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
        me = pwd.getpwuid(os.getuid()).pw_name
        lines = [
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {directory}/host_key",
            f"PidFile {directory}/sshd.pid",
            "AuthorizedKeysFile none",
            f"AuthorizedKeysCommand /bin/cat {directory}/authorized_keys",
            f"AuthorizedKeysCommandUser {me}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "UsePAM no",
            "StrictModes no",
            "LogLevel VERBOSE",
            "Subsystem sftp internal-sftp",
        ]
        # The first occurrence of an option wins in sshd_config: extra options go first.
        options = list(options)
        given = {line.split()[0] for line in options}
        defaults = {"MaxStartups": "MaxStartups 100:30:200", "MaxSessions": "MaxSessions 50"}
        lines = options + lines + [line for key, line in defaults.items() if key not in given]
        (directory / "sshd_config").write_text("\n".join(lines) + "\n")
        subprocess.run([SSHD, "-t", "-f", str(directory / "sshd_config")], check=True)
        process = _launch(directory, port)
        sshd = Sshd(
            directory=directory,
            port=port,
            user=self._user,
            client_key=directory / "client_key",
            known_hosts=known_hosts,
            log=directory / "sshd.log",
            process=process,
        )
        self.started.append(sshd)
        return sshd

    def close(self) -> None:
        for sshd in self.started:
            sshd.stop()
