from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import _hq
import _kube
import _slurm  # tests/ is on sys.path (pytest's rootdir conftest)
import _sshd
import pytest
import trio
import trio.testing
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.core_v1 import Namespace

import corra
from corra.processes._registry import installed

# Every installed backend imported now, not within a Hypothesis strategy that builds a spec
# (the first spec loads the plug-ins): importing httpx, as the kubernetes backend does, imports
# rich, which draws from the random module, and Hypothesis refuses that inside a strategy.
installed.plugins  # noqa: B018


class Recorder:
    """A log of what actors did, shared by the actors of one test."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def __call__(self, *event: str) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list[str]:
        return [event[1] for event in self.events if event[0] == kind]

    def clear(self) -> None:
        self.events.clear()


class Worker(corra.Actor):
    """Logs its start and stop; "crash" raises, "exit" stops normally, anything else echoes."""

    def __init__(self, name: str, log: Recorder) -> None:
        self.name = name
        self.log = log

    def lifespan(self):  # type: ignore[override]
        return _logged(self.name, self.log)

    async def handle(self, msg):
        if msg == "crash":
            raise RuntimeError(f"{self.name} crashed")
        if msg == "exit":
            self.stop()
            return "bye"
        return msg


class _logged:
    def __init__(self, name: str, log: Recorder) -> None:
        self.name = name
        self.log = log

    async def __aenter__(self) -> None:
        self.log("start", self.name, f"{trio.current_time():g}")

    async def __aexit__(self, *exc: object) -> None:
        self.log("stop", self.name, f"{trio.current_time():g}")


def worker(name: str, log: Recorder, **options: object) -> corra.ChildSpec:
    return corra.ChildSpec(id=name, start=lambda: Worker(name, log), **options)  # type: ignore[arg-type]


async def settle() -> None:
    """Wait until every task is blocked: the supervisor has reacted to what just happened."""
    await trio.testing.wait_all_tasks_blocked()


def ref_of(sup: corra.SupervisorRef, child_id: str) -> corra.Ref:
    for info in sup.which_children():
        if info.id == child_id:
            assert isinstance(info.ref, corra.Ref), info
            return info.ref
    raise AssertionError(f"no child {child_id!r}")


# -- a real sshd (tests/_sshd.py) ----------------------------------------------------------


@pytest.fixture(scope="session")
def sshd_factory(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Starts real sshds on loopback (skips, with the reason, where none can run)."""
    reason = _sshd.unavailable()
    if reason is not None:
        pytest.skip(reason)
    factory = _sshd.SshdFactory(tmp_path_factory.mktemp("sshd"))
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def sshd(sshd_factory: _sshd.SshdFactory) -> _sshd.Sshd:
    """One sshd with a default test config, shared by the session."""
    return sshd_factory.start(name="default")


# -- a real single-node Slurm (tests/_slurm.py) --------------------------------------------


@pytest.fixture(scope="session")
def slurm():  # type: ignore[no-untyped-def]
    """A running single-node Slurm (skips, with the reason, where none can run)."""
    reason = _slurm.unavailable()
    if reason is not None:
        pytest.skip(reason)
    # munged wants every directory above its socket searchable by all: pytest's base temp
    # dir is 0700, so the cluster lives in a scratch dir of its own.
    scratch = Path(tempfile.mkdtemp(prefix="corra-slurm-"))
    scratch.chmod(0o755)
    cluster = _slurm.SlurmCluster(scratch).start()
    yield cluster
    cluster.stop()
    shutil.rmtree(scratch, ignore_errors=True)


# -- a real HyperQueue server and worker (tests/_hq.py) -------------------------------------


@pytest.fixture(scope="session")
def hq_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A HyperQueue server with a 4-core worker, shared by the session (skips, with the
    reason, where the wheel is missing). Tests that stop a server use `fresh_hq_server`."""
    reason = _hq.available()
    if reason is not None:
        pytest.skip(reason)
    server = _hq.start_server(tmp_path_factory.mktemp("hq"), cores=4)
    yield server
    server.stop()


@pytest.fixture
def fresh_hq_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A HyperQueue server of the test's own (2-core worker), stopped after it if it runs."""
    reason = _hq.available()
    if reason is not None:
        pytest.skip(reason)
    server = _hq.start_server(tmp_path_factory.mktemp("hq"), cores=2)
    yield server
    server.stop()


# -- a real Kubernetes control plane and corra's stand-in node (tests/_kube.py) ---------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the cluster is marked ``kubernetes``, whether its module says so
    or not: ``make test`` runs those after the control plane is built (`-m kubernetes`)."""
    for item in items:
        if "kube" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kubernetes)


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A running control plane with the stand-in node ``corra-test-node``: its
    ``kubeconfig`` path and its ``node`` (to cut off). Skips, with the reason, only where
    the control plane cannot be built; fails where it could be but was not."""
    reason = _kube.unbuildable()
    if reason is not None:
        pytest.skip(reason)
    if not _kube.built():
        pytest.fail(
            "kube-apiserver not built on this machine: run scripts/kube-test-cluster.sh build"
            " (make test does; about 6 minutes)"
        )
    cluster = _kube.KubeCluster(tmp_path_factory.mktemp("kube")).start()
    yield cluster
    cluster.stop()


# -- the cluster's API, for the tests that use it (a module may define its own) ---------------


@pytest.fixture
async def client(kube: _kube.KubeCluster) -> AsyncIterator[AsyncClient]:
    """A client of the session's cluster (its kubeconfig, its admin)."""
    async with AsyncClient(KubeConfig.from_file(kube.kubeconfig)) as client:
        yield client


@pytest.fixture
async def namespace(client: AsyncClient) -> AsyncIterator[str]:
    """A namespace of the test's own (deleted after it, with whatever it holds)."""
    name = f"t-{secrets.token_hex(4)}"
    await client.create(Namespace.from_dict({"metadata": {"name": name}}))
    yield name
    with trio.CancelScope(shield=True):
        await client.delete(Namespace, name)
