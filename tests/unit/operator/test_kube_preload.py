"""The Event recorder's client is imported before the operator serves admissions."""

from __future__ import annotations

import sys

from sidecar_operator import kube


def test_the_event_client_is_imported_before_the_first_event():
    kube.preload_events_api()

    assert "kubernetes.client.api.core_v1_api" in sys.modules
