"""`python -m cli`: the `sniffer` command, as the console script runs it."""

import sys

from cli.main import main

sys.exit(main())
