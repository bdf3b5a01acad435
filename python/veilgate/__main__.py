"""``python -m veilgate``: the same as the ``veilgate`` command."""

import sys

from veilgate.cli import main

sys.exit(main())
