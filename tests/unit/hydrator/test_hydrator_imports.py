"""What an idle hydrator imports: its resident memory is mostly the modules it loads."""

from __future__ import annotations

import subprocess
import sys


def test_a_kafka_only_hydrator_does_not_load_the_nats_client() -> None:
    # nats-py (and what it pulls in) is over a quarter of an idle hydrator's RSS; only a
    # binding that names a NATS source needs it (see benchmarks/footprint.py).
    probe = (
        "import sys\n"
        "import sidecar_hydrator.main\n"
        "from sidecar_hydrator.hydrator import Hydrator\n"
        "loaded = sorted(m for m in sys.modules if m == 'nats' or m.startswith(('nats.', "
        "'sidecar_hydrator.nats_source')))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "", f"loaded at start-up: {result.stdout.strip()}"
