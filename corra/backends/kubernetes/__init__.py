"""The ``kubernetes`` backend (issue 14, under construction): processes as Kubernetes Jobs,
one per attempt, managed from outside the cluster through lightkube's async client.

Built so far: the Job's naming (`_naming`) and a process's ``kubernetes`` table
(`_options`). The backend itself, its watch, logs and outcomes come next.
"""
