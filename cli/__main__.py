"""`python -m cli`: the `sniffer` command, as the console script runs it."""

import sys

from cli.main import main

if __name__ == "__main__":  # importing the module (pkgutil.walk_packages) runs nothing
    sys.exit(main())
