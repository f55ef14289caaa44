"""The agent host: runs wasm agents over NATS JetStream and enforces the cross-talk controls."""
