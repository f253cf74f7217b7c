"""Moved to :mod:`sidecar_operator.api.labels` (the vocabulary is part of the API, not of the
engine). This name re-exports it only while code written against the old place merges in;
import ``sidecar_operator.api.labels`` in new code."""

from sidecar_operator.api.labels import *  # noqa: F403
