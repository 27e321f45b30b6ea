"""The ``kubernetes`` backend (issue 14, under construction): processes as Kubernetes Jobs,
one per attempt, managed from outside the cluster through lightkube's async client.

Built so far, each tested against the real control plane (scripts/kube-test-cluster.sh):
- `_naming`: an attempt's Job name (from its key), labels and the adoption check;
- `_options`: a process's ``kubernetes`` table, validated with field paths;
- `_manifest`: the Job of an attempt;
- `_outcomes`: what a Job and its pod say, classified;
- `_watch`: one list+watch of corra's Jobs and pods per namespace (relists on 410 Gone).

Next: the backend class on the plug-in seam (launch with adoption, wait, kill, logs home,
recovery's orphan sweep, pause), the conformance kit, the suite ``kubernetes``.
"""
