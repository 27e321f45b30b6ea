"""N one-task jobs of ``true`` on a real LocalCluster (tests/_hq.py, 2 cores), submitted
straight to the server (as corra's helper submits them: `job_description`), ``direct`` or under
corra's task wrapper (``library``: shipped, as the backend runs it; ``source``: the source in
the command; ``old``: the command of an older source, from a file), in interleaved rounds
(a first round not counted); medians of the wall time from the first submission to the last
job's end (a one-shot status every 10 ms: wait_for_jobs looks once a second).

    .venv/bin/python scripts/hq_wrapped_vs_direct.py 200 5 direct,library python3 [OLD_SOURCE]
"""

import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import _hq
from hyperqueue.ffi.client import ClientConnection

from corra.backends.hyperqueue._requests import job_description
from corra.chaperone import task_job


class _Seen(Exception):
    pass


def wait(connection: ClientConnection, ids: list[int]) -> None:
    while True:
        seen: list[dict] = []

        def once(jobs: dict, seen: list[dict] = seen) -> None:
            seen.append(jobs)
            raise _Seen

        with contextlib.suppress(_Seen):
            connection.wait_for_jobs(ids, once)
        if seen and all(counts.get("completed") for counts in seen[0].values()):
            return
        time.sleep(0.01)


def main() -> None:
    jobs, rounds, variants = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
    python = sys.argv[4] if len(sys.argv) > 4 else "python3"
    old = Path(sys.argv[5]).read_text() if len(sys.argv) > 5 else None
    scratch = Path(tempfile.mkdtemp(prefix="hq-bench-"))
    server = _hq.start_server(scratch, cores=2)
    try:
        connection = ClientConnection(str(server.server_dir))
        root = scratch / "runs"
        root.mkdir(mode=0o700)
        library = task_job.ship(root / ".corra")
        times: dict[str, list[float]] = {variant: [] for variant in variants}
        count = 0
        for number in range(rounds + 1):
            for variant in variants:
                descriptions = []
                for _ in range(jobs):
                    count += 1
                    run_dir = root / f"k{count}"
                    run_dir.mkdir(mode=0o700)
                    args = ["true"]
                    if variant != "direct":
                        shipped = library if variant == "library" else None
                        args = task_job.argv(run_dir, 10.0, None, args, python, library=shipped)
                        if variant == "old":
                            args[4] = old
                    job = {"name": f"corra-k{count}", "args": args, "env": {}, "cpus": 1}
                    job.update(cwd=str(run_dir), stdout=None, stderr=str(run_dir / "w.stderr"))
                    descriptions.append(job_description(job))
                began = time.monotonic()
                wait(connection, [connection.submit_job(job) for job in descriptions])
                elapsed = time.monotonic() - began
                failed = [path for path in root.glob("k*/w.stderr") if path.stat().st_size]
                assert not failed, failed[0].read_text()
                if number:
                    times[variant].append(elapsed)
                print(f"round {number} {variant:8} {elapsed:.2f} s", flush=True)
        direct = statistics.median(times["direct"]) if "direct" in times else None
        for variant, taken in times.items():
            median = statistics.median(taken)
            ratio = f"  direct/this {direct / median:.2f}" if direct else ""
            print(f"{variant:8} median {median:.2f} s {[round(t, 2) for t in taken]}{ratio}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
