"""``python -m corra.cli``: the ``corra`` command."""

import sys

from corra.cli import main

sys.exit(main())
