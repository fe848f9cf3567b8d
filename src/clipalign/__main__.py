"""``python -m clipalign`` runs the command line."""

import sys

from clipalign.cli.main import main

sys.exit(main())
