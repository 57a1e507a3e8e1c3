"""`python -m ananke`: the `ananke` command."""

import sys

from ananke.cli import main

sys.exit(main())
