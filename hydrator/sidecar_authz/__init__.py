"""sidecar-state's authorizer: Envoy's ext_authz HTTP service over the Pod's own Redis.

A process of its own (the ``sidecar-state-authz`` native sidecar, shipped in the hydrator
image), so that a Kafka catch-up burst in the hydrator never stalls a request.
:mod:`~sidecar_authz.config` is the contract with the operator, :mod:`~sidecar_authz.rules`
the pure decision, :mod:`~sidecar_authz.resp` (Redis) and :mod:`~sidecar_authz.server`
(HTTP/1.1) the thin I/O edges, :mod:`~sidecar_authz.main` the process.
"""
