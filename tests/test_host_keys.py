"""Host keys are always checked against a real sshd, whatever ``~/.ssh/config`` says
(`corra.backends.ssh._hostkeys`)."""

from __future__ import annotations

from pathlib import Path

import _sshd
import pytest
from test_ssh_pool import home_with_config, pool_for

from corra._errors import ConfigError, HostKeyRefused
from corra.backends.ssh import SshTransport, parse_host

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "lines",
    [
        ["UserKnownHostsFile none"],
        ["UserKnownHostsFile none", "StrictHostKeyChecking no"],
        ["StrictHostKeyChecking no"],
    ],
    ids=["user-known-hosts-none", "and-strict-no", "strict-no"],
)
async def test_ssh_config_cannot_turn_off_host_key_checks(
    sshd: _sshd.Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: list[str]
) -> None:
    # ~/.ssh/known_hosts does not have the server's key: the connection must be refused.
    home = home_with_config(tmp_path / "home", sshd, *lines)
    monkeypatch.setenv("HOME", str(home))
    logins_before = sshd.logins()
    async with pool_for(parse_host("corra-alias", {})) as pool:
        with pytest.raises(HostKeyRefused, match="host key") as refused:
            await SshTransport(pool).run(["true"])
    assert sshd.logins() == logins_before
    if "UserKnownHostsFile none" in lines:
        assert "UserKnownHostsFile none" in str(refused.value)
        assert "~/.ssh/known_hosts" in str(refused.value)

    # With the key in ~/.ssh/known_hosts, the same config connects: checked, not refused.
    (home / ".ssh" / "known_hosts").write_text(sshd.known_hosts.read_text())
    async with pool_for(parse_host("corra-alias", {})) as pool:
        result = await SshTransport(pool).run(["echo", "checked"])
    assert result.stdout == b"checked\n"
    assert sshd.logins() == logins_before + 1


@pytest.mark.parametrize("value", ["none", "None", " NONE "])
def test_a_host_table_cannot_turn_off_host_key_checks(value: str) -> None:
    with pytest.raises(ConfigError, match=r"hosts\.far\.known_hosts: got .*always checks"):
        parse_host("far", {"known_hosts": value})
