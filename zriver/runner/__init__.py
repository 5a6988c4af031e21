"""The node agent: resources, execution backends, logs, heartbeats and the update outbox."""
