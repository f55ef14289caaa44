"""The `agora` command line: the human window onto keys, facts, the host and the bridge."""
