"""The errors localkube raises: one base class, so a caller can catch every failure of the tool
in one place, and one subclass per part, whose message names the step and what to do next."""

from __future__ import annotations


class LocalkubeError(RuntimeError):
    """A localkube step failed; the message says which, and where its log is."""


class BuildError(LocalkubeError):
    """A Go build step failed; the message names the step and the log to read."""


class ControlPlaneError(LocalkubeError):
    """The control plane failed to start or to become ready."""


class KindBuildError(LocalkubeError):
    """A step of the kind build (tools, node image) failed; the message names it."""
