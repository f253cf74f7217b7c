"""kopf handlers: thin edges over the pure core, named ``<kind>_<event>``.

``index`` is loaded by every role; ``webhook`` by the webhook role, ``controller`` by the
controller role (see :mod:`sidecar_operator.run`).
"""
