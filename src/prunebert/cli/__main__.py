"""`python -m prunebert.cli ...` (e.g. under `accelerate launch`): the `prunebert` command."""

import sys

from prunebert.cli.main import main

sys.exit(main())
