"""sidecar-state hydrator: keeps the Pod's Redis in step with a Kafka event stream.

A pure core and thin edges: :mod:`~sidecar_hydrator.records` (record -> change, per format)
and :mod:`~sidecar_hydrator.batch` (collapse per key) do no I/O;
:mod:`~sidecar_hydrator.store` (Redis over the socket), :mod:`~sidecar_hydrator.consumer`
(one aiokafka consumer per binding) and :mod:`~sidecar_hydrator.health` (probes, metrics)
are the edges; :mod:`~sidecar_hydrator.hydrator` ties them into the recovery loop and
:mod:`~sidecar_hydrator.main` is the process (``sidecar-state-hydrator``).
"""
