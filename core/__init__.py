"""The shared core of agora: the contract's types, signed envelopes and the fact log.

Everything here is pure or touches only local files: no sockets, no event loop.
The host (``agora.host``) and the bridge (``agora.bridge``) both build on it and never
on each other.
"""
