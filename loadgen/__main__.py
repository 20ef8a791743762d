"""``python -m loadgen`` is the ``loadgen`` command."""

import sys

from loadgen.cli.main import main

sys.exit(main())
