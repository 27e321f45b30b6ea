"""How the stand-in node runs one pod: its containers as local programs, its status as a
kubelet reports it, and the failure modes a pod can ask for.

Rule 1: only the node writes a pod's status after binding, through ``Node.patch_status``
(a strategic merge patch of ``pods/status``, as the kubelet sends: conditions and container
statuses merge by their ``type``/``name``; a container's ``state`` names all three states,
two of them null, so that the one given replaces the one before).
Rule 2: a program that was started is reaped, and its whole process group killed, before the
pod's run returns, cancelled or not (as all of a container's processes die with it).

Failure modes (`Behaviour`) are chosen by the pod's annotation ``corra.test/node-behaviour``;
the image is never pulled and its name is ignored. ``corra.test/node-behaviour-after``
(seconds) delays ``oom-killed`` and ``evicted`` after the program starts.

Volumes: an ``emptyDir`` is a directory of the node's, made when the pod starts and removed
with it; nothing is mounted (the programs run on this machine), so a container that mounts
it gets, in its env and command, the directory for its ``mountPath`` (as it gets a file
for its ``terminationMessagePath``). Containers sharing one see the same files.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any, Protocol

import trio

from corra.testing._kubelogs import ContainerLog, LogError, format_time

BEHAVIOUR = "corra.test/node-behaviour"
BEHAVIOUR_AFTER = "corra.test/node-behaviour-after"
HOST_IP = "127.0.0.1"


class Behaviour(enum.Enum):
    """What the node does with a pod, by its ``corra.test/node-behaviour`` annotation."""

    #: (no annotation) run the command; report its real exit code.
    RUN = "run"
    #: run it; SIGKILL it after ``node-behaviour-after`` seconds if that is set (as the
    #: kernel's OOM killer would); report ``terminated.reason: OOMKilled``, exit code 137.
    OOM_KILLED = "oom-killed"
    #: as ``oom-killed`` but with the program's real exit code (a child was OOM-killed and
    #: the main process exited 0: the runtime still says OOMKilled).
    OOM_KILLED_REAL_EXIT_CODE = "oom-killed-real-exit-code"
    #: never run: ``waiting.reason`` ErrImagePull, then ImagePullBackOff a second later.
    IMAGE_PULL_BACKOFF = "image-pull-backoff"
    #: never run: ``waiting.reason`` CreateContainerConfigError (what a missing Secret or
    #: ConfigMap of an env ``valueFrom`` also gives, without any annotation).
    CREATE_CONTAINER_CONFIG_ERROR = "create-container-config-error"
    #: run it; after ``node-behaviour-after`` seconds SIGKILL it and report the pod Failed,
    #: reason Evicted, as the kubelet's eviction manager does under memory pressure.
    EVICTED = "evicted"


class Node(Protocol):
    """What a pod's run needs of its node."""

    name: str

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Patch a pod's status (waits while the node is cut off)."""

    async def read_key(self, kind: str, namespace: str, name: str, key: str) -> str | None:
        """A key of a Secret or ConfigMap (decoded), or None where there is none."""


class ConfigError(Exception):
    """A container cannot be configured (CreateContainerConfigError); the text says why."""


def _now() -> str:
    # metav1.Time has whole seconds.
    return format_time(time.time_ns() // 1_000_000_000 * 1_000_000_000)


def _state(kind: str, **fields: Any) -> dict[str, Any]:
    return {"waiting": None, "running": None, "terminated": None, kind: fields}


_REFERENCE = re.compile(r"\$\$|\$\(([-._a-zA-Z0-9]+)\)")


#: The most bytes of a termination message a kubelet reports (its last ones):
#: ``MaxContainerTerminationMessageLength``.
MESSAGE_LENGTH = 4096


def termination_message(path: str | None) -> str | None:
    """What a kubelet reports of a container's termination message file (policy ``File``):
    its last `MESSAGE_LENGTH` bytes, as text; None for none (or an empty one)."""
    if path is None:
        return None
    try:
        with open(path, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - MESSAGE_LENGTH))
            data = file.read()
    except OSError:
        return None
    return data.decode(errors="replace") or None


def _moved(text: str, mount: str, directory: str) -> str:
    """``text`` with a path in ``mount`` (or ``mount`` itself) at its start moved into
    ``directory``, which stands for it."""
    mount = mount.rstrip("/")
    if text == mount or text.startswith(mount + "/"):
        return directory + text[len(mount) :]
    return text


def _expand(text: str, env: dict[str, str]) -> str:
    """``$(VAR)`` and ``$$`` as the kubelet expands them in env values, command and args."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, text)


class _Program:
    """One container's program: its process (a session of its own), its log, and the file
    that stands for its ``terminationMessagePath``, if it has one."""

    def __init__(
        self, process: trio.Process, log: ContainerLog, message_file: str | None = None
    ) -> None:
        self.process = process
        self.log = log
        self.message_file = message_file
        self.started = _now()
        self.finished = ""
        self.ended = trio.Event()

    @property
    def exit_code(self) -> int:
        code = self.process.returncode
        assert code is not None
        return code if code >= 0 else 128 - code  # as container runtimes report signals

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    async def run(self) -> None:
        """Copy its output to the log until it exits, then kill what it left behind."""
        assert self.process.stdout is not None
        async with trio.open_nursery() as nursery:

            async def pump() -> None:
                async for data in self.process.stdout:  # type: ignore[union-attr]
                    self.log.feed(data)

            nursery.start_soon(pump)
            await self.process.wait()
            # The container ends with its main process: children holding the pipe go too.
            self._signal_group(signal.SIGKILL)
        self.log.end()
        self.finished = _now()
        self.ended.set()

    async def stop(self, grace: float) -> None:
        """SIGTERM the program (as a container runtime does: its init process only),
        SIGKILL its whole group after ``grace`` seconds (the container's cgroup); wait for
        its end. Shielded: it completes even when cancelled."""
        with trio.CancelScope(shield=True):
            if self.ended.is_set():
                return
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(grace):
                await self.ended.wait()
            self._signal_group(signal.SIGKILL)
            await self.process.wait()
            with trio.move_on_after(5):
                await self.ended.wait()


class PodRun:
    """One pod on the node, from its binding until it is deleted."""

    def __init__(self, node: Node, pod: Any) -> None:
        self.node = node
        self.pod = pod
        self.namespace: str = pod.metadata.namespace
        self.name: str = pod.metadata.name
        self.uid: str = pod.metadata.uid
        annotations = pod.metadata.annotations or {}
        self.behaviour = Behaviour(annotations.get(BEHAVIOUR, Behaviour.RUN.value))
        self.after = float(annotations.get(BEHAVIOUR_AFTER, "0"))
        self.containers = list(pod.spec.containers)
        #: container name -> why it waits (the log endpoint answers 400 with it)
        self.waiting = {container.name: "ContainerCreating" for container in self.containers}
        self.programs: dict[str, _Program] = {}
        #: set when the pod is being deleted; ``grace``: how long SIGTERM may take
        self.deleting = trio.Event()
        self.grace = 30.0
        self._started_at = _now()
        self._pod_failure: tuple[str, str] | None = None  # (reason, message)
        self._stopping = False  # the node stops the pod's programs (deleted, evicted ...)
        #: emptyDir volume name -> the directory that stands for it (made when it starts)
        self.volumes: dict[str, str] = {}

    @property
    def pids(self) -> dict[str, int]:
        """Container name -> the pid of its program (also its process group)."""
        return {name: program.process.pid for name, program in self.programs.items()}

    def find_log(self, container: str) -> ContainerLog:
        """The log of ``container``, or LogError as the kubelet answers."""
        if container in self.programs:
            return self.programs[container].log
        if container in self.waiting:
            reason = self.waiting[container]
            raise LogError(
                400, f'container "{container}" in pod "{self.name}" is waiting to start: {reason}'
            )
        raise LogError(404, f'container "{container}" not found in pod "{self.name}"')

    def delete(self, grace: float) -> None:
        """The pod is being deleted: stop its programs (SIGTERM, SIGKILL after ``grace``)."""
        if not self.deleting.is_set():
            self.grace = grace
            self.deleting.set()

    async def run(self) -> None:
        """Run the pod until its containers have ended, reporting each step in its status.

        Returns early when it is being deleted (its programs stopped); cancellation kills
        the programs (Rule 2). A pod that never starts waits here until it is deleted."""
        try:
            await self._run()
        finally:
            with trio.CancelScope(shield=True):
                for program in self.programs.values():
                    await program.stop(0)
                    if program.message_file is not None:
                        with contextlib.suppress(OSError):
                            os.unlink(program.message_file)
                for directory in self.volumes.values():
                    shutil.rmtree(directory, ignore_errors=True)

    async def _run(self) -> None:
        if self.pod.status.phase == "Running":
            # Started by an earlier run of the node: its programs died with it (a real
            # kubelet's containers would not). Never run twice: report them killed.
            self._pod_failure = ("NodeRestarted", "corra's test node restarted: programs lost")
            now = _now()
            lost = _state("terminated", exitCode=137, reason="Error", startedAt=now, finishedAt=now)
            self.waiting.clear()
            await self._patch("Failed", {c.name: lost for c in self.containers})
            return
        creating = {c.name: _state("waiting", reason="ContainerCreating") for c in self.containers}
        await self._patch("Pending", creating)
        if self.behaviour is Behaviour.IMAGE_PULL_BACKOFF:
            # As the kubelet: the pull fails, then it backs off (and here never retries).
            message = "image pulls fail on corra's test node, as its annotation asked"
            await self._report_waiting("ErrImagePull", message)
            with trio.move_on_after(1):
                await self.deleting.wait()
            if not self.deleting.is_set():
                await self._report_waiting("ImagePullBackOff", message)
            await self.deleting.wait()
            return
        for volume in self.pod.spec.volumes or ():
            if volume.emptyDir is not None:
                self.volumes[volume.name] = tempfile.mkdtemp(prefix="corra-kubenode-emptydir-")
        configs: dict[str, tuple[list[str], dict[str, str]]] = {}
        try:
            if self.behaviour is Behaviour.CREATE_CONTAINER_CONFIG_ERROR:
                raise ConfigError(f"asked for by the pod's annotation {BEHAVIOUR}")
            for container in self.containers:
                configs[container.name] = await self._config(container)
        except ConfigError as error:
            await self._report_waiting("CreateContainerConfigError", str(error))
            await self.deleting.wait()
            return
        states: dict[str, dict[str, Any]] = {}
        for container in self.containers:
            argv, env = configs[container.name]
            states[container.name] = await self._start(container, argv, env)
        self.waiting.clear()
        await self._patch("Running", states, ready=True)
        async with trio.open_nursery() as nursery:
            for name, program in self.programs.items():
                nursery.start_soon(self._run_program, name, program, states)
            nursery.start_soon(self._stop_when_told, nursery.cancel_scope)
            await self._wait_all_ended()
            nursery.cancel_scope.cancel()
        for name, program in self.programs.items():
            states[name] = self._terminated(program)
        failed = self._pod_failure is not None or any(
            state["terminated"]["exitCode"] != 0 for state in states.values()
        )
        await self._patch("Failed" if failed else "Succeeded", states)

    async def _run_program(
        self, name: str, program: _Program, states: dict[str, dict[str, Any]]
    ) -> None:
        """Run one container's program; report its end at once if others run on (as a
        kubelet does: a sidecar may outlive the program)."""
        await program.run()
        if not self._stopping and not all(p.ended.is_set() for p in self.programs.values()):
            states[name] = self._terminated(program)
            await self._patch("Running", states)

    async def _wait_all_ended(self) -> None:
        for program in self.programs.values():
            await program.ended.wait()

    async def _stop_when_told(self, scope: trio.CancelScope) -> None:
        """Stop the programs on deletion, the pod's deadline, or its failure mode."""
        timers = []
        deadline = self.pod.spec.activeDeadlineSeconds
        if deadline is not None:
            message = "Pod was active on the node longer than the specified deadline"
            timers.append((float(deadline), ("DeadlineExceeded", message)))
        if self.behaviour is Behaviour.EVICTED:
            message = "The node was low on resource: memory. (corra's test node, as asked)"
            timers.append((self.after, ("Evicted", message)))
        if self.behaviour is Behaviour.OOM_KILLED and self.after > 0:
            timers.append((self.after, None))
        grace = 0.0
        with trio.move_on_after(min((t for t, _ in timers), default=float("inf"))):
            await self.deleting.wait()
            grace = self.grace
        if not self.deleting.is_set() and timers:
            self._pod_failure = min(timers, key=lambda timer: timer[0])[1]
        self._stopping = True  # (the pod's end is reported as a whole)
        async with trio.open_nursery() as nursery:
            for program in self.programs.values():
                nursery.start_soon(program.stop, grace)

    def _container_id(self, name: str) -> str | None:
        program = self.programs.get(name)
        return None if program is None else f"corra-test://{program.process.pid}"

    def _terminated(self, program: _Program) -> dict[str, Any]:
        message = termination_message(program.message_file)
        code = program.exit_code
        reason = "Completed" if code == 0 else "Error"
        if self.behaviour is Behaviour.OOM_KILLED:
            code, reason = 137, "OOMKilled"
        elif self.behaviour is Behaviour.OOM_KILLED_REAL_EXIT_CODE:
            reason = "OOMKilled"
        return _state(
            "terminated",
            exitCode=code,
            reason=reason,
            startedAt=program.started,
            finishedAt=program.finished,
            containerID=f"corra-test://{program.process.pid}",
            **({} if message is None else {"message": message}),
        )

    async def _start(self, container: Any, argv: list[str], env: dict[str, str]) -> dict[str, Any]:
        log = ContainerLog()
        message_file = None
        if container.terminationMessagePath:
            # (no mount here: the file that stands for the path is given where env names it)
            fd, message_file = tempfile.mkstemp(prefix="corra-kubenode-termination-")
            os.close(fd)
            env = {
                name: message_file if value == container.terminationMessagePath else value
                for name, value in env.items()
            }
        try:
            process = await trio.lowlevel.open_process(
                argv,
                env=env,
                cwd=container.workingDir or None,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,  # one pipe: interleaved as written
                start_new_session=True,  # its own process group, killed as a whole
            )
        except OSError as error:
            # As containerd: the task does not start, exit code 128, reason StartError.
            now = _now()
            message = f"failed to start {argv[0]!r}: {error}"
            return _state(
                "terminated",
                exitCode=128,
                reason="StartError",
                message=message,
                startedAt=now,
                finishedAt=now,
            )
        self.programs[container.name] = _Program(process, log, message_file)
        return _state("running", startedAt=self.programs[container.name].started)

    async def _report_waiting(self, reason: str, message: str) -> None:
        for name in self.waiting:
            self.waiting[name] = reason
        states = {name: _state("waiting", reason=reason, message=message) for name in self.waiting}
        await self._patch("Pending", states)

    async def _config(self, container: Any) -> tuple[list[str], dict[str, str]]:
        """The argv and environment of a container; raises ConfigError."""
        env = {"PATH": os.environ.get("PATH", os.defpath), "HOSTNAME": self.name}
        for variable in container.env or ():
            if variable.valueFrom is None:
                env[variable.name] = _expand(variable.value or "", env)
                continue
            value = await self._value_from(variable.valueFrom)
            if value is not None:
                env[variable.name] = value
        argv = [_expand(arg, env) for arg in [*(container.command or ()), *(container.args or ())]]
        for mount in container.volumeMounts or ():
            directory = self.volumes.get(mount.name)
            if directory is None:
                raise ConfigError(f"corra's test node mounts emptyDir volumes only: {mount.name}")
            env = {name: _moved(value, mount.mountPath, directory) for name, value in env.items()}
            argv = [_moved(arg, mount.mountPath, directory) for arg in argv]
        if not argv:
            raise ConfigError("corra's test node runs command + args; this container has neither")
        return argv, env

    async def _value_from(self, source: Any) -> str | None:
        if source.fieldRef is not None:
            return self._field(source.fieldRef.fieldPath)
        for kind, reference in (
            ("Secret", source.secretKeyRef),
            ("ConfigMap", source.configMapKeyRef),
        ):
            if reference is None:
                continue
            value = await self.node.read_key(kind, self.namespace, reference.name, reference.key)
            if value is None and not reference.optional:
                # The kubelet's own words (kubelet_pods.go).
                raise ConfigError(
                    f"couldn't find key {reference.key} in {kind} {self.namespace}/{reference.name}"
                )
            return value
        raise ConfigError(
            "corra's test node supports valueFrom fieldRef, secretKeyRef and configMapKeyRef only"
        )

    def _field(self, path: str) -> str:
        metadata = self.pod.metadata
        fields = {
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "metadata.uid": self.uid,
            "spec.nodeName": self.node.name,
            "spec.serviceAccountName": self.pod.spec.serviceAccountName or "",
            "status.hostIP": HOST_IP,
            "status.podIP": HOST_IP,
        }
        if path in fields:
            return fields[path]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']*)'\]", path)
        if match is not None:
            return (getattr(metadata, match.group(1)) or {}).get(match.group(2), "")
        raise ConfigError(f"unsupported fieldPath {path!r}")

    async def _patch(
        self, phase: str, states: dict[str, dict[str, Any]], ready: bool = False
    ) -> None:
        """Report the pod's phase and its containers' states (Rule 1)."""
        now = _now()
        ready_reason = (
            None
            if ready
            else ("PodCompleted" if phase in ("Succeeded", "Failed") else "ContainersNotReady")
        )

        def condition(kind: str, value: bool, reason: str | None = None) -> dict[str, Any]:
            return {
                "type": kind,
                "status": str(value),
                "lastProbeTime": None,
                "lastTransitionTime": now,
                "reason": reason,
            }

        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": HOST_IP,
            "podIP": HOST_IP,
            "podIPs": [{"ip": HOST_IP}],
            "startTime": self._started_at,
            "conditions": [
                condition("Initialized", True),
                condition("Ready", ready, ready_reason),
                condition("ContainersReady", ready, ready_reason),
            ],
            "containerStatuses": [
                {
                    "name": container.name,
                    "image": container.image or "",
                    "imageID": "",
                    "ready": ready,
                    "started": states[container.name]["running"] is not None,
                    "restartCount": 0,
                    # (the pid of its program: tests look for it)
                    "containerID": self._container_id(container.name),
                    "state": states[container.name],
                }
                for container in self.containers
            ],
        }
        if self._pod_failure is not None:
            status["reason"], status["message"] = self._pod_failure
        await self.node.patch_status(self.namespace, self.name, status)
