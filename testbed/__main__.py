"""`python -m testbed up|status|down|simulate`: the local test bed's own entry point.

Development only: the test bed is not in the production wheel, and `sniffer --help` does
not offer it (`testbed.cli` is the command).
"""

import sys

from testbed.cli import main

if __name__ == "__main__":  # importing the module runs nothing
    sys.exit(main(sys.argv[1:]))
