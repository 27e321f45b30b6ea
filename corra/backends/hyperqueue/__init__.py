"""The ``hyperqueue`` backend: processes as tasks on a HyperQueue server (a host).

Every call into the HyperQueue client runs in a helper process of its own, one per server
(`_helper`, spoken to through `_client`): the wheel's ``wait_for_jobs`` holds the GIL while it
waits, so it must never run on a thread of corra's runtime.

- `_helper`: the helper program (JSON lines on stdin/stdout, the wheel's client inside);
- `_requests`: its requests' fields validated, and the job descriptions made of them;
- `_client`: the trio side of it (`HqHelper`, `open_helper`): one request at a time, the
  helper restarted when it dies, errors mapped to corra's.
"""
