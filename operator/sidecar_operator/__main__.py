"""``python -m sidecar_operator``: the same as ``sidecar-state-operator``."""

from sidecar_operator.run import main

main()
