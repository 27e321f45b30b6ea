"""A program's output kept within its limit, with no pipe between the program and its files."""

import contextlib
import os
import time

#: Seconds between two checks of a running program's output against its limit: at most, and
#: at least (the first comes after that; see `OutputLimit`).
OUTPUT_CHECK_MAX = 0.2
OUTPUT_CHECK_MIN = 0.005


class OutputLimit:
    """Keeps a program's stdout and stderr within ``limit`` bytes each, with no pipe between
    the program and its files (Rule 2).

    The files are appended to (``O_APPEND``), so a file cut back to the limit (``ftruncate``:
    its first ``limit`` bytes stay) takes the program's next writes at its new end, and the
    next check cuts those too: what a program writes past its limit is dropped, and counted
    (``dropped``; bytes written between a size read and its cut go uncounted, so the count is
    a lower bound). A check is due when, at the rate the output grew since the last one, it
    would pass the limit by ``slack`` (1/64 of the limit, at least 1 MiB); never
    sooner than `OUTPUT_CHECK_MIN` seconds after the last, nor later than twice as long as
    the last wait (a program that was quiet is looked at again soon: it may only have been
    off the CPU), nor later than `OUTPUT_CHECK_MAX`. So a file passes its limit by about
    ``slack`` while a program writes at a steady rate, by what it writes in
    `OUTPUT_CHECK_MAX` seconds at worst (a burst after a long quiet spell), and only until
    the next check.
    """

    def __init__(self, targets, limit, now):
        self.targets = targets  # per stream: an fd on its file, or the file's path
        self.limit = limit  # None: no limit
        self.slack = max(limit >> 6, 1 << 20) if limit else 0
        self.dropped = [0] * len(targets)
        self.sizes = [0] * len(targets)  # at the last check, after the cut
        self.checked = now
        self.wait = OUTPUT_CHECK_MIN  # the last wait between two checks
        self.due = float("inf") if limit is None else now + OUTPUT_CHECK_MIN

    def check(self, now):
        """Cut the files back to the limit; when the next check is due (monotonic seconds)."""
        self.cut(now)
        return self.due

    def cut(self, now):
        """Cut the files back to the limit, and say when the next check is due (``due``);
        per stream, its size after the cut (None: not read, without a limit or on an
        error)."""
        found = [None] * len(self.targets)
        if self.limit is None:
            return found
        delay = min(self.wait * 2, OUTPUT_CHECK_MAX)
        elapsed = max(now - self.checked, 1e-6)
        for index, target in enumerate(self.targets):
            try:
                size = os.stat(target).st_size
                if size > self.limit:
                    os.truncate(target, self.limit)
                    self.dropped[index] += size - self.limit
            except OSError:
                continue
            rate = (size - self.sizes[index]) / elapsed
            self.sizes[index] = found[index] = min(size, self.limit)
            if rate > 0:
                delay = min(delay, (self.limit - self.sizes[index] + self.slack) / rate)
        self.checked = now
        self.wait = max(delay, OUTPUT_CHECK_MIN)
        self.due = now + self.wait
        return found

    def check_due(self, now):
        """`check` if one is due; when the next one is."""
        return self.check(now) if now >= self.due else self.due

    def finish(self):
        """The last cut, once the program and its group are gone: per stream, its final size
        (as `cut` gives it: None where not read), and the bytes dropped."""
        return self.cut(time.monotonic()), self.dropped

    def close(self):
        for target in self.targets:
            if isinstance(target, int):
                with contextlib.suppress(OSError):
                    os.close(target)
