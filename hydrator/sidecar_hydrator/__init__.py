"""sidecar-state hydrator: keeps the Pod's Redis in step with a Kafka event stream."""
