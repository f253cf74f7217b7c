"""The controller's decisions as pure functions: status, roll-outs, owned bindings.

The kopf handlers in :mod:`sidecar_operator.handlers.controller` fetch objects, call these,
and write what they return.
"""
