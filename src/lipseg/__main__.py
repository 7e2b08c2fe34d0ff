"""`python -m lipseg`: the same command line as the `lipseg` script."""

from lipseg.inference.cli import main

raise SystemExit(main())
