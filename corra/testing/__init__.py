"""What corra offers the test suites of backends: the conformance kit.

`BackendConformance` is a reusable pytest suite (pytest-trio) that a backend runs against
itself: subclass it in a test module, provide its fixtures, and pytest collects the inherited
tests. `open_plugin` opens a `corra.processes._backend.BackendPlugin` the way the runtime
does, for the ``open_backend`` fixture. See ``docs/plugins.md``.

Importing this package needs pytest and pytest-trio (corra's ``test`` extra).
"""

from corra.testing._conformance import BackendConformance as BackendConformance
from corra.testing._kit import Kit as Kit
from corra.testing._kit import Loser as Loser
from corra.testing._kit import Opener as Opener
from corra.testing._kit import open_plugin as open_plugin
