"""Cluster mode: partitioned twin workers and a stateless fleet API on NATS JetStream."""
