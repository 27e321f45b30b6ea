"""The kill escalation: one for every program corra runs on a machine.

A program is ended as a group: SIGTERM to its process group, and SIGKILL once the grace is
over (``grace <= 0``: SIGKILL at once). A second request may shorten the grace, never lengthen
it; a timeout during a kill changes nothing; nothing is sent once the program has ended. The
own and the shared chaperone (`_run.Run`), the runtime that kills a program whose chaperone is
gone, and a batch job's wrapper (`batch_job`) all follow these rules through `Escalation`.

Self-contained (the standard library's ``signal`` only): a batch job carries this module's
source before `batch_job`'s (`batch_job.source`). Its syntax is Python 3.6's.
"""

import signal


class Escalation:
    """When a program's group is terminated and when it is killed.

    A subclass says how its group is signalled (`kill_group`) and whether the program has
    ended (`ended`); the caller wakes up at ``escalate_at`` (monotonic seconds; ``inf`` once
    the SIGKILL went) and calls `escalate`.
    """

    def __init__(self, grace):
        self.grace = grace  # the spec's kill_grace: for a timeout, or a kill that names none
        self.killed = False  # corra asked for the kill
        self.timed_out = False
        self.escalate_at = None  # SIGKILL the group then; None while no kill is under way

    def kill_group(self, number):
        """Send signal ``number`` to the program's group."""
        raise NotImplementedError

    @property
    def ended(self):
        """Whether the program has ended (then nothing is sent any more)."""
        raise NotImplementedError

    def kill(self, now, grace):
        """A kill request from corra (`killed`); as `request`."""
        if self.ended:
            return None  # ended already; its record is on the way
        self.killed = True
        return self.request(now, grace)

    def request(self, now, grace):
        """Terminate the group: SIGTERM now, SIGKILL ``grace`` seconds later (a second
        request may shorten the grace, never lengthen it). When to escalate if that changed
        (the caller wakes up then), else None."""
        if self.ended:
            return None
        if self.escalate_at is None:
            return self._terminate(now, grace)
        if now + grace < self.escalate_at:
            self.escalate_at = now + grace
            return self.escalate_at
        return None

    def time_out(self, now):
        """The timeout expired: terminate with the spec's grace, unless a kill is under way
        already. When to escalate, or None."""
        if self.ended or self.escalate_at is not None:
            return None
        self.timed_out = True
        return self._terminate(now, self.grace)

    def escalate(self, now):
        """SIGKILL the group if its grace is over."""
        if not self.ended and self.escalate_at is not None and now >= self.escalate_at:
            self.kill_group(signal.SIGKILL)
            self.escalate_at = float("inf")

    def _terminate(self, now, grace):
        if grace <= 0:
            self.kill_group(signal.SIGKILL)
            self.escalate_at = float("inf")
        else:
            self.kill_group(signal.SIGTERM)
            self.escalate_at = now + grace
        return self.escalate_at
