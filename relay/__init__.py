"""relaynet: self-hosted multi-region realtime messaging (WebSockets over NATS JetStream)."""

__version__ = "0.2.0"
