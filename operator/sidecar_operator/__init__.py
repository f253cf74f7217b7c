"""sidecar-state operator: the StateBinding API, the injection engine, the CLI, the operator."""

__version__ = "0.1.0"
