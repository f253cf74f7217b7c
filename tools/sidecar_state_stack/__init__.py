"""Real external services for the integration tests and benchmarks.

The hydrator's job is to move records from Kafka into a Redis on a Unix socket; mocks of either
side would hide exactly the behaviour we need to test (compaction, codecs, outages, a Redis that
lost its data). So the test suite runs a real single-node KRaft Kafka broker (jars fetched from
Maven Central, see :mod:`sidecar_state_stack.kafka_broker`) and Debian's ``redis-server``
(:mod:`sidecar_state_stack.redis_server`), both as child processes on loopback / a Unix socket.
"""
