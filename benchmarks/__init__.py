"""corra's benchmark harness: each suite measures corra against a baseline in the same run.

Run it as ``python -m benchmarks --suite kernel --json bench-kernel.json``. A suite is a module
of this package with a function ``benchmarks(options: Options) -> list[Benchmark]``; to add one,
write the module and name it in `SUITES` (modules are imported only when their suite runs, so
a suite's heavy dependencies never burden the others).
"""

import warnings

from benchmarks._harness import Benchmark as Benchmark
from benchmarks._harness import Options as Options
from benchmarks._harness import Result as Result

# The ssh suite imports asyncssh itself (its raw baseline), before corra.backends.ssh quiets
# asyncssh's DSA deprecation warnings (cryptography >= 47): no noise in the results.
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh\.")

#: Suite name -> module that defines it.
SUITES: dict[str, str] = {
    "kernel": "benchmarks.kernel",
    "process": "benchmarks.process",
    "ssh": "benchmarks.ssh",
    "slurm": "benchmarks.slurm",
    "kubernetes": "benchmarks.kubernetes",
    "hyperqueue": "benchmarks.hyperqueue",
    "api": "benchmarks.api",
    "scale": "benchmarks.scale",
    "workflow": "benchmarks.workflow",
}
