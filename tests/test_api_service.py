"""`corra serve` as users run it: a subprocess on a free port, driven with httpx; stopped with
SIGTERM and SIGKILL while its programs run, and started again."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

CORRA = [sys.executable, "-m", "corra.cli"]

pytestmark = pytest.mark.slow


class Service:
    """A `corra serve` subprocess, ready once it said where it listens."""

    def __init__(
        self,
        state_dir: Path,
        *options: str,
        env: dict[str, str] | None = None,
        token_file: Path | None = None,
    ) -> None:
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.log = state_dir.parent / f"serve-{time.monotonic_ns()}.err"
        with self.log.open("w") as stderr:
            self.process = subprocess.Popen(
                [
                    *CORRA,
                    "serve",
                    "--state-dir",
                    str(state_dir),
                    "--listen",
                    "127.0.0.1:0",
                    *options,
                ],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env,
            )
        try:
            self.url = self._wait_ready()
            self.token = (token_file or state_dir / "api-token").read_text().strip()
        except BaseException:
            self.stop(signal.SIGKILL)
            raise

    def _wait_ready(self, timeout: float = 30.0) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.1)
            if ready:
                line = self.process.stdout.readline()
                found = re.search(r"listening on (https?://\S+)", line)
                if found:
                    return found.group(1)
            if self.process.poll() is not None:
                break
        raise AssertionError(f"corra serve did not start: {self.log.read_text()}")

    def client(self, **options: Any) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
            **options,
        )

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(timeout=timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.stop(signal.SIGKILL)


def corra(
    state: Path, *args: str, timeout: float = 60, **kwargs: Any
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CORRA, args[0], "--state-dir", str(state), *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def wait_until(http: httpx.Client, condition: Any, timeout: float = 30.0) -> list[dict]:
    """All processes, once ``condition(items)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        items = http.get("/v1/processes", params={"limit": 1000}).json()["items"]
        if condition(items):
            return items
        assert time.monotonic() < deadline, items
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def submit_workers(http: httpx.Client, ledger: Path, count: int, seconds: float) -> None:
    script = (
        'echo "$CORRA_PROCESS_NAME" >> "$LEDGER"; '
        f"i=0; while [ $i -lt {int(seconds * 10)} ]; do echo tick $i; i=$((i+1)); sleep 0.1; done"
    )
    for index in range(count):
        response = http.post(
            "/v1/processes",
            json={
                "argv": ["sh", "-c", script],
                "name": f"worker-{index}",
                "env": {"LEDGER": str(ledger)},
            },
        )
        assert response.status_code == 201, response.text


def test_health_needs_no_token_and_the_rest_does(tmp_path):
    with Service(tmp_path / "state") as service:
        assert httpx.get(f"{service.url}/v1/health").status_code == 200
        assert httpx.get(f"{service.url}/v1/processes").status_code == 401
        bad = httpx.get(f"{service.url}/metrics", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
        with service.client() as http:
            assert http.get("/v1/processes").json() == {"items": [], "next_cursor": None}
            assert "corra_processes" in http.get("/metrics").text
        token_file = service.state_dir / "api-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        info = json.loads((service.state_dir / "api.json").read_text())
        assert info["url"] == service.url and info["pid"] == service.process.pid
        assert service.stop() == 0
    assert not (service.state_dir / "api.json").exists()
    assert not (service.state_dir / "api.sock").exists()


def test_a_token_file_of_its_own(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret-token\n")
    secret.chmod(0o600)  # a token readable by others is refused
    with Service(tmp_path / "state", "--token-file", str(secret), token_file=secret) as service:
        assert not (service.state_dir / "api-token").exists()
        headers = {"Authorization": "Bearer s3cret-token"}
        assert httpx.get(f"{service.url}/v1/processes", headers=headers).status_code == 200
        # the command line finds the token through api.json
        assert corra(service.state_dir, "ps").returncode == 0
        service.stop()


def test_a_second_service_on_the_same_state_dir_is_refused(tmp_path):
    with Service(tmp_path / "state") as service:
        second = corra(service.state_dir, "serve", "--listen", "127.0.0.1:0")
        assert second.returncode == 2
        assert f"another corra runtime (pid {service.process.pid})" in second.stderr
        assert service.stop() == 0


def test_an_address_in_use_is_said_plainly(tmp_path):
    with Service(tmp_path / "one") as service:
        port = service.url.rsplit(":", 1)[1]
        other = corra(tmp_path / "two", "serve", "--listen", f"127.0.0.1:{port}")
        assert other.returncode == 2 and "--listen 127.0.0.1:" in other.stderr
        service.stop()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_the_service_leaves_programs_running_and_the_next_reattaches(tmp_path, signum):
    state, ledger = tmp_path / "state", tmp_path / "ledger"
    with Service(state) as service:
        with service.client() as http:
            submit_workers(http, ledger, count=4, seconds=3)
            items = wait_until(http, lambda items: all(i["phase"] == "running" for i in items))
            pids = [http.get(f"/v1/processes/{i['id']}").json()["handle"]["pid"] for i in items]
        # A follower, through the socket, across the restart (the CLI reconnects by itself).
        follower = subprocess.Popen(
            [*CORRA, "logs", "-f", "worker-0", "--state-dir", str(state)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)
        code = service.stop(signum)
    assert code == (0 if signum == signal.SIGTERM else -signal.SIGKILL)
    assert all(alive(pid) for pid in pids)  # the programs did not notice
    if signum == signal.SIGKILL:
        assert (state / "api.sock").exists()  # stale: nobody listens there
    listing = corra(state, "ps", "--json")  # no service: read from the state dir
    assert listing.returncode == 0, listing.stderr
    assert {r["phase"] for r in json.loads(listing.stdout)["items"]} == {"running"}

    with Service(state) as again, again.client() as http:
        items = wait_until(
            http, lambda items: all(i["phase"] == "finished" for i in items), timeout=60
        )
        assert [(i["attempt"], i["returncode"]) for i in items] == [(1, 0)] * 4
        for item in items:
            history = http.get(f"/v1/processes/{item['id']}").json()["history"]
            assert [t["event"] for t in history].count("launch") == 1
        assert again.stop() == 0
    names = ledger.read_text().split()
    assert sorted(names) == [f"worker-{i}" for i in range(4)]  # each ran once
    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, err
    assert out.splitlines() == [f"tick {i}" for i in range(30)]


def test_a_stream_follower_reconnects_from_its_offset_to_the_next_service(tmp_path):
    state = tmp_path / "state"
    script = "i=0; while [ $i -lt 30 ]; do echo line $i; i=$((i+1)); sleep 0.1; done"
    with Service(state) as service, service.client() as http:
        http.post("/v1/processes", json={"argv": ["sh", "-c", script], "name": "lines"})
        entries: list[dict[str, Any]] = []
        with http.stream("GET", "/v1/processes/lines/logs", params={"follow": "true"}) as response:
            for line in response.iter_lines():
                if line:
                    entries.append(json.loads(line))
                    if len(entries) == 3:
                        service.process.send_signal(signal.SIGTERM)  # the stream ends cleanly
        assert service.stop() == 0  # (a second SIGTERM, while it stops: at once, still 0)
    with Service(state) as again, again.client() as http:
        params = {
            "follow": "true",
            "attempt": entries[-1]["attempt"],
            "offset": entries[-1]["next_offset"],
        }
        with http.stream("GET", "/v1/processes/lines/logs", params=params) as response:
            entries += [json.loads(line) for line in response.iter_lines() if line]
        again.stop()
    assert "".join(e["text"] for e in entries) == "".join(f"line {i}\n" for i in range(30))


def test_the_readme_curl_examples_work_as_written(tmp_path):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## `corra serve`") :]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    script = next(block for block in blocks if "curl" in block)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("CORRA_STATE_DIR", None)
    with Service(tmp_path / ".corra", "--listen", "127.0.0.1:0", env=env) as service:
        port = service.url.rsplit(":", 1)[1]
        # The README's examples use the default port; this test's service has its own.
        script = script.replace("127.0.0.1:7878", f"127.0.0.1:{port}")
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert '"text": "hi 3\\n"' in done.stdout or '"text":"hi 3\\n"' in done.stdout
        assert '"phase":"killed"' in done.stdout.replace(" ", "")
        service.stop()


def test_a_log_follower_does_not_hold_up_the_stop_of_the_service(tmp_path):
    # `corra logs -f` sends its next request on the stream's connection as soon as the stream
    # ends; hypercorn, winding down, read no more from it and kept it open until the graceful
    # timeout (5 s). The stream now closes its connection.
    state = tmp_path / "state"
    script = "i=0; while [ $i -lt 40 ]; do echo tick $i; i=$((i+1)); sleep 0.1; done"
    with Service(state) as service:
        with service.client() as http:
            response = http.post("/v1/processes", json={"argv": ["sh", "-c", script], "name": "t"})
            assert response.status_code == 201, response.text
        follower = subprocess.Popen(
            [*CORRA, "logs", "-f", "t", "--state-dir", str(state)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert follower.stdout is not None
        ready, _, _ = select.select([follower.stdout], [], [], 30)
        assert ready  # attached, streaming
        first = os.read(follower.stdout.fileno(), 1 << 16)
        started = time.monotonic()
        assert service.stop() == 0
        elapsed = time.monotonic() - started
    assert elapsed < 2.5, elapsed  # (the graceful timeout is 5 s)
    with Service(state) as again:  # the follower carries on with the next service
        out, err = follower.communicate(timeout=60)
        assert again.stop() == 0
    assert follower.returncode == 0, err.decode()
    assert (first + out).decode().splitlines() == [f"tick {i}" for i in range(40)]


def test_logs_read_the_state_dir_when_the_service_dies_as_they_begin(tmp_path):
    """A service killed while `corra logs` makes its first request (the connection accepted,
    then reset): the logs are read from the state dir, as with no service at all."""
    import socket
    import struct
    import threading

    state = tmp_path / "state"
    ran = corra(state, "run", "--", "sh", "-c", "echo one; echo two")
    assert ran.returncode == 0, ran.stderr
    token = state / "api-token"
    token.write_text("s3cret\n")
    token.chmod(0o600)
    dying = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dying.bind(str(state / "api.sock"))
    dying.listen()

    def reset_every_connection() -> None:
        while True:
            try:
                connection, _ = dying.accept()
            except OSError:
                return
            # (SO_LINGER 0: closing resets the connection, as a killed process's does)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.recv(65536)
            connection.close()

    threading.Thread(target=reset_every_connection, daemon=True).start()
    try:
        listed = corra(state, "ps", "-a", "--json")
        logs = corra(state, "logs", json.loads(listed.stdout)["items"][0]["id"])
    finally:
        dying.close()
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == "one\ntwo\n"
