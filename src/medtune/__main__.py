"""`python -m medtune` (also what `accelerate launch -m medtune` runs)."""

import sys

from medtune.cli import main

sys.exit(main())
