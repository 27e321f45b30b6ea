"""Specs are plain data, validated at the edge with errors that name the field."""

from __future__ import annotations

import math

import pytest

import corra


class Echo(corra.Actor):
    async def handle(self, msg):
        return msg


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: corra.SupervisorFlags(strategy="one_for_some"),
            r"SupervisorFlags.strategy: got 'one_for_some', expected one of \['one_for_one'",
        ),
        (
            lambda: corra.SupervisorFlags(intensity=-1),
            r"SupervisorFlags.intensity: got -1, expected an integer >= 0",
        ),
        (lambda: corra.SupervisorFlags(intensity=1.5), r"intensity: got 1.5, expected an integer"),
        (
            lambda: corra.SupervisorFlags(period=0),
            r"SupervisorFlags.period: got 0, expected a number of seconds > 0",
        ),
        (lambda: corra.SupervisorFlags(period=math.nan), r"period: got nan"),
        (lambda: corra.ChildSpec(id="", start=Echo), r"ChildSpec.id: got '', expected a non-empty"),
        (lambda: corra.ChildSpec(id="x", start=42), r"ChildSpec.start: got 42, expected an Actor"),  # type: ignore[arg-type]
        (
            lambda: corra.ChildSpec(id="x", start=Echo, restart="sometimes"),
            r"ChildSpec.restart: got 'sometimes'",
        ),  # type: ignore[arg-type]
        (
            lambda: corra.ChildSpec(id="x", start=Echo, shutdown=-1),
            r"ChildSpec.shutdown: got -1, expected seconds >= 0",
        ),
        (lambda: corra.ChildSpec(id="x", start=Echo, shutdown="gently"), r"shutdown: got 'gently'"),  # type: ignore[arg-type]
        (
            lambda: corra.ChildSpec(id="x", start=Echo, mailbox_capacity=0),
            r"ChildSpec.mailbox_capacity: got 0, expected an integer >= 1",
        ),
        (
            lambda: corra.ChildSpec(id="x", start=Echo, backoff=1.0),
            r"ChildSpec.backoff: got 1.0, expected a Backoff",
        ),  # type: ignore[arg-type]
        (
            lambda: corra.Backoff(factor=0.5),
            r"Backoff.factor: got 0.5, expected a number of seconds >= 1",
        ),
        (
            lambda: corra.SupervisorSpec(children=[1]),
            r"SupervisorSpec.children\[0\]: got 1, expected a ChildSpec",
        ),  # type: ignore[list-item]
        (
            lambda: corra.SupervisorSpec(
                children=[corra.ChildSpec(id="a", start=Echo), corra.ChildSpec(id="a", start=Echo)]
            ),
            r"SupervisorSpec.children\[1\].id: got 'a', expected an id not used",
        ),
    ],
)
def test_invalid_specs_name_the_field_the_value_and_what_was_expected(build, message):
    with pytest.raises(corra.ConfigError, match=message):
        build()


def test_defaults_follow_otp():
    flags = corra.SupervisorFlags()
    assert (flags.strategy, flags.intensity, flags.period) == ("one_for_one", 1, 5.0)
    child = corra.ChildSpec(id="w", start=Echo)
    assert (child.restart, child.type, child.shutdown_grace) == ("permanent", "worker", 5.0)
    sup = corra.ChildSpec(id="s", start=corra.SupervisorSpec())
    assert (sup.type, sup.shutdown_grace) == ("supervisor", math.inf)


def test_backoff_delay_grows_and_caps():
    backoff = corra.Backoff(initial=0.5, factor=3, max=10)
    assert [backoff.delay(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10, 10]
    assert corra.Backoff(initial=1, factor=10, max=7).delay(10_000) == 7
