"""``python -m gateway.cli``: the ``gateway`` command."""

import sys

from . import main

sys.exit(main())
