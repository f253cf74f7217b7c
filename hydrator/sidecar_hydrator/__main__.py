"""``python -m sidecar_hydrator`` runs the same entry point as ``sidecar-state-hydrator``."""

import sys

from sidecar_hydrator.main import main

sys.exit(main())
