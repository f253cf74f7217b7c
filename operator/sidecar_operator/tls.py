"""Moved to :mod:`sidecar_operator.webhook_tls.x509`; this name re-exports it only while code
written against the old place merges in."""

from sidecar_operator.webhook_tls.x509 import *  # noqa: F403
