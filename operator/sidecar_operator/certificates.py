"""Moved to the :mod:`sidecar_operator.webhook_tls` package (bundle, files, reconcile); this
name re-exports it only while code written against the old place merges in."""

from sidecar_operator.webhook_tls import *  # noqa: F403
