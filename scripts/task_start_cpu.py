"""CPU of a HyperQueue task's start under corra's task wrapper, without HyperQueue: runs the
wrapper's command (`task_job.argv`) for ``true`` N times, one run dir each, and prints the
children's rusage (user + system) per run.

    .venv/bin/python scripts/task_start_cpu.py 200 /usr/bin/python3 library
    MODE: pass (python3 -I -S -c pass), true (true alone), source (the source in the command),
          library (shipped once, `task_job.ship`; a first run compiles it, not counted)
"""

import os
import resource
import subprocess
import sys
import tempfile

from corra.chaperone import task_job


def main() -> None:
    runs, python, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    env = {**os.environ, "HQ_JOB_ID": "1", "HQ_TASK_ID": "0"}
    root = tempfile.mkdtemp(prefix="task-start-")
    library = task_job.ship(os.path.join(root, ".corra")) if mode == "library" else None

    def command(number: int) -> list[str]:
        run_dir = os.path.join(root, str(number))
        os.mkdir(run_dir, 0o700)
        if mode == "pass":
            return [python, "-I", "-S", "-c", "pass"]
        if mode == "true":
            return ["true"]
        return task_job.argv(run_dir, 1.0, None, ["true"], python=python, library=library)

    subprocess.run(command(runs), env=env, check=True)  # (the first: compiles the library)
    commands = [command(number) for number in range(runs)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for argv in commands:
        subprocess.run(argv, env=env, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    print(f"{mode:8} {python}: {1000 * cpu / runs:.2f} ms of CPU per task ({runs} runs)")


if __name__ == "__main__":
    main()
