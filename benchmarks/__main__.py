from benchmarks import SUITES
from benchmarks._harness import main

raise SystemExit(main(SUITES))
