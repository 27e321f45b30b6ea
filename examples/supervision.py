"""A supervisor restarting a crashing actor, and giving up when it crashes too often.

Run it with ``.venv/bin/python examples/supervision.py`` (after ``make run`` or ``make venv``
made the venv); it prints what happened. (``make run`` runs ``examples/quickstart.toml``.)
"""

from __future__ import annotations

import logging
import sys

import trio

import corra


class Flaky(corra.Actor):
    """Counts the messages it gets; a message "boom" makes it crash."""

    def __init__(self) -> None:
        self.count = 0

    async def handle(self, msg: object) -> int:
        if msg == "boom":
            raise RuntimeError("boom")
        self.count += 1
        return self.count


class Steady(corra.Actor):
    async def handle(self, msg: object) -> str:
        return f"steady got {msg!r}"


def show(rt: corra.Runtime) -> None:
    for node in rt.walk():
        print(
            f"  {'  ' * node.depth}{node.path:<20} {node.type:<10} {node.status:<8}"
            f" restarts={node.restarts}"
        )


async def main() -> None:
    flags = corra.SupervisorFlags(strategy="one_for_one", intensity=2, period=5.0)
    spec = corra.SupervisorSpec(
        flags=flags,
        children=[
            corra.ChildSpec(id="flaky", start=Flaky, restart="permanent"),
            corra.ChildSpec(id="steady", start=Steady),
        ],
    )
    try:
        async with corra.open_runtime(flags=corra.SupervisorFlags(intensity=0)) as rt:
            workers = await rt.spawn_supervisor(spec, name="workers")
            print("started the tree:")
            show(rt)

            flaky = rt.lookup("/workers/flaky")
            assert isinstance(flaky, corra.Ref)
            print(f"\n{flaky.path} counts: {await flaky.call('a')}, {await flaky.call('b')}")
            for round_ in range(1, 4):
                print(f"\ncrash {round_}: sending 'boom' to {flaky.path}")
                try:
                    await flaky.call("boom")
                except corra.CallFailed as exc:
                    print(f"  call failed: {exc} (cause: {exc.__cause__!r})")
                await trio.sleep(0.01)  # let the supervisor react
                flaky = rt.lookup("/workers/flaky")  # the restarted incarnation
                assert isinstance(flaky, corra.Ref)
                print(f"  {flaky.path} is back, state reset: count = {await flaky.call('c')}")
                show(rt)
                print(f"  {workers.statistics()}")
    except corra.RestartIntensityExceeded as exc:
        print(f"\nthe runtime stopped: {exc}")
        print(f"  because: {exc.__cause__}")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="  [log] %(name)s: %(message)s"
    )
    trio.run(main)
