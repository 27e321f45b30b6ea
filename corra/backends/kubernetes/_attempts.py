"""What the kubernetes backend keeps of its attempts at home, under ``<state dir>/kubernetes``.

- ``instance``: this state dir's instance id, made once: the value of the instance label of
  every Job it creates (one watch selects them by it; recovery sweeps orphans by it), so two
  state dirs on one cluster never touch each other's Jobs.
- ``<host>/<key>/`` per attempt (0700), its files 0600, each written whole (renamed over):
  - ``intent.json``: written before the Job is created (the durable intent): a Job of this
    instance whose attempt has no directory is an orphan (its process was removed);
  - ``handle.json``: the handle, once the Job exists: a replayed launch returns it and never
    creates the Job again, even after the Job was deleted;
  - ``result.json``: how the attempt ended, once its result and logs are home: a replayed
    wait returns it, and the Job may then be deleted;
  - ``stdout`` and ``log-position.json``: the logs that came home (`_logs.LogFiles`);
  - ``value``: the program's value (what it wrote to ``$CORRA_RESULT``, its termination
    message), written before ``result.json`` (`keep_value`), read as the stream
    ``result`` (`AttemptFiles.read_value`).
- ``<host>/.undeleted/<key>``: an attempt whose result is home and whose Job may still be
  on the cluster (kept, or its deletion not confirmed): a runtime that starts with some
  sweeps the host before it closes, even when it has nothing else to do there.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import attrs

from corra._statedir import make_private_dirs, read_private, write_private
from corra.processes._backend import EffectKey, handle_data
from corra.processes._lifecycle import Result

_INSTANCE = "instance"
_UNDELETED = ".undeleted"
_VALUE = "value"
#: The most bytes of a termination message Kubernetes reports (its last ones: a longer one
#: is cut, which cannot be told from one that long): the kubelet's
#: ``MaxContainerTerminationMessageLength``.
MESSAGE_LIMIT = 4096


def instance_id(root: Path) -> str:
    """The instance id of the state dir whose kubernetes directory is ``root`` (made once)."""
    path = root / _INSTANCE
    try:
        return read_private(path).decode().strip()
    except FileNotFoundError:
        make_private_dirs(root)
        made = f"corra-{secrets.token_hex(6)}"
        write_private(path, made.encode(), sync=True)
        return made


def undeleted(root: Path, host: str) -> list[str]:
    """The keys of the attempts on ``host`` whose Jobs may still be there (see the module)."""
    try:
        return os.listdir(root / host / _UNDELETED)
    except FileNotFoundError:
        return []


class AttemptFiles:
    """The files of one attempt (see the module's docstring)."""

    def __init__(self, root: Path, host: str, key: EffectKey | str) -> None:
        self.directory = root / host / str(key)
        self._undeleted = root / host / _UNDELETED / str(key)

    def exists(self) -> bool:
        return self.directory.is_dir()

    def write_intent(self, intent: dict[str, Any]) -> None:
        try:  # (the attempt's directory is new: one mkdir, not `make_private_dirs`'s walk)
            os.mkdir(self.directory, 0o700)
        except FileNotFoundError:
            make_private_dirs(self.directory)
        except FileExistsError:
            pass  # (a launch again after a crash)
        write_private(self.directory / "intent.json", json.dumps(intent).encode(), sync=True)

    def write_handle(self, handle: Any) -> None:
        # (not synced: a handle lost with the machine is found again by the Job's name)
        self._write("handle.json", handle_data(handle), sync=False)

    def handle(self, handle_type: type) -> Any | None:
        data = self._read("handle.json")
        return None if data is None else handle_type(**data)

    def write_result(self, result: Result) -> None:
        self._write("result.json", attrs.asdict(result))

    def result(self) -> Result | None:
        data = self._read("result.json")
        return None if data is None else Result(**data)

    def write_value(self, data: bytes) -> None:
        make_private_dirs(self.directory)
        write_private(self.directory / _VALUE, data, sync=True)

    def read_value(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of the program's value from ``offset`` (b"": none)."""
        try:
            return read_private(self.directory / _VALUE)[offset : offset + max(size, 0)]
        except FileNotFoundError:
            return b""

    def mark_undeleted(self, undeleted: bool = True) -> None:
        """Say (or no longer) that the attempt's Job may still be on the cluster."""
        if undeleted:
            make_private_dirs(self._undeleted.parent)
            write_private(self._undeleted, b"")  # (not synced: a Job missed is swept later)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._undeleted)

    def remove(self) -> None:
        """Forget the attempt (idempotent)."""
        self.mark_undeleted(False)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _write(self, name: str, data: Any, *, sync: bool = True) -> None:
        make_private_dirs(self.directory)
        write_private(self.directory / name, json.dumps(data).encode(), sync=sync)

    def _read(self, name: str) -> Any | None:
        with contextlib.suppress(FileNotFoundError):
            return json.loads(read_private(self.directory / name))
        return None


def keep_value(files: AttemptFiles, message: str | None, result: Result) -> Result:
    """Keep the value an attempt's program wrote (its termination ``message``) with its
    files, before its ``result`` is (`AttemptFiles.write_result`); ``result`` as it is, or
    with its ``value_error`` when the message may have been cut by Kubernetes' limit."""
    if not message:
        return result
    data = message.encode()
    if len(data) >= MESSAGE_LIMIT:
        return attrs.evolve(
            result,
            value_error=(
                f"$CORRA_RESULT refused: {len(data)} bytes reported: Kubernetes keeps at most "
                f"{MESSAGE_LIMIT} bytes of a termination message (its last ones), so a value "
                f"there must take fewer than {MESSAGE_LIMIT}"
            ),
        )
    files.write_value(data)
    return result
