"""The ``hyperqueue`` backend: processes as tasks on HyperQueue servers that are hosts
(``[hosts.NAME]`` with a ``hyperqueue`` table: a server someone started, or one corra starts in
a Slurm allocation). See docs/hyperqueue.md.

Every call into the HyperQueue client runs in a helper process of its own, one per server
(`_helper`, spoken to through `_client`): the wheel's ``wait_for_jobs`` holds the GIL while it
waits, so it must never run on a thread of corra's runtime. Each task runs the program under
corra's task wrapper (`corra.chaperone.task_job`), which claims the attempt's run dir.

- `_options`: a process's ``hyperqueue`` table, a host's, and its ``allocation``;
- `_helper`: the helper program (JSON lines on stdin/stdout, the wheel's client inside);
- `_requests`: its requests' fields validated, and the job descriptions made of them;
- `_client`: the trio side of it (`HqHelper`, `open_helper`): one request at a time, the
  helper restarted when it dies, errors mapped to corra's;
- `_servers`: a host: its server (given or allocated), its helper, its watched jobs;
- `_allocation`, `_allocation_job`: the Slurm allocations corra makes, and their program;
- `_backend`: the backend (launch, wait by batched polls, kill through the run dir).
"""

from __future__ import annotations

from corra.backends.hyperqueue._backend import HqHandle, HyperQueueBackend, open_hyperqueue
from corra.backends.hyperqueue._options import HyperQueueHostOptions, HyperQueueOptions
from corra.processes._backend import BackendPlugin

PLUGIN = BackendPlugin(
    name="hyperqueue",
    open=open_hyperqueue,
    handle=HqHandle,
    options=HyperQueueOptions,
    host_options=HyperQueueHostOptions,
    capabilities=HyperQueueBackend.capabilities,
    description="tasks on a HyperQueue server (a host with a hyperqueue table), polled in batches",
)

__all__ = ["PLUGIN", "HqHandle", "HyperQueueBackend", "HyperQueueHostOptions", "HyperQueueOptions"]
