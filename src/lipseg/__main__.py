"""`python -m lipseg`: the same command line as `lipseg`."""

import sys

from lipseg.inference.cli import main

sys.exit(main())
