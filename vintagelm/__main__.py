"""`python -m vintagelm` is the same program as the `vintage` console script."""
import sys

from vintagelm.cli import main

sys.exit(main())
