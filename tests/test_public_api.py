"""The public namespace is small, re-exports only, and stays stable."""

from __future__ import annotations

import corra

PUBLIC = {
    "Actor",
    "BackendError",
    "ConnectionFailed",
    "HostKeyRefused",
    "HostUnavailable",
    "RemotePathError",
    "TransportError",
    "CorruptRecord",
    "InvalidTransition",
    "LaunchFailed",
    "NameTaken",
    "NoSuchProcess",
    "ProcessError",
    "ProcessRecord",
    "ProcessRef",
    "ProcessSpec",
    "ProcessState",
    "ProgramLost",
    "RecoveryReport",
    "Result",
    "StoreError",
    "Transition",
    "ValueGone",
    "result_value",
    "default_state_dir",
    "parse_process_spec",
    "ActorError",
    "ActorStatistics",
    "ActorStopped",
    "BRUTAL_KILL",
    "Backoff",
    "CallFailed",
    "ChildCounts",
    "ChildInfo",
    "ChildRunning",
    "ChildSpec",
    "ChildStartFailed",
    "ConfigError",
    "CorraError",
    "DuplicateChild",
    "MailboxFull",
    "NoSuchChild",
    "Ref",
    "RestartIntensityExceeded",
    "Runtime",
    "SupervisorError",
    "SupervisorFlags",
    "SupervisorRef",
    "SupervisorSpec",
    "SupervisorStatistics",
    "TreeNode",
    "open_runtime",
    "WorkflowError",
    "StepFailed",
    "workflow",
}


def test_public_names_are_pinned():
    names = {name for name in vars(corra) if not name.startswith("_")}
    names -= {
        "actors",
        "backends",
        "persistence",
        "processes",
        "api",
        "chaperone",
        "cli",
        "testing",
        "workflows",
    }  # submodules, once imported
    assert names == PUBLIC


def test_exception_tree():
    assert issubclass(corra.ActorStopped, corra.ActorError)
    assert issubclass(corra.MailboxFull, corra.ActorError)
    assert issubclass(corra.CallFailed, corra.ActorError)
    for cls in (
        corra.RestartIntensityExceeded,
        corra.ChildStartFailed,
        corra.DuplicateChild,
        corra.NoSuchChild,
        corra.ChildRunning,
    ):
        assert issubclass(cls, corra.SupervisorError)
    for cls in (corra.ActorError, corra.SupervisorError, corra.ConfigError):
        assert issubclass(cls, corra.CorraError)
    assert issubclass(corra.WorkflowError, corra.ConfigError)
    assert issubclass(corra.StepFailed, corra.CorraError)
    assert not issubclass(corra.StepFailed, corra.ConfigError)  # (a step's end, not a bad spec)
