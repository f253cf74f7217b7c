#!/usr/bin/env bash
# Fetch the Kafka broker jars for the integration tests (cached; a no-op when already there).
# Usage: bash tools/sidecar_state_stack/install_kafka.sh [--version X.Y.Z]
# Same as: python3 -m sidecar_state_stack.kafka_broker install [--version X.Y.Z]
# Needs java (17+) and mvn on PATH; honours SIDECAR_STATE_CACHE (default ~/.cache/sidecar-state).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."  # tools/: localkube and sidecar_state_stack importable
exec python3 -m sidecar_state_stack.kafka_broker install "$@"
