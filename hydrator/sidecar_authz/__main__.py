"""``python -m sidecar_authz`` runs the same entry point as ``sidecar-state-authz``."""

import sys

from sidecar_authz.main import main

sys.exit(main())
