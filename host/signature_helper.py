"""The signature helper process: Ed25519 checks read from stdin, answers on stdout.

Run as ``python -m agora.host.signature_helper`` by
:class:`~agora.host.signature_checks.WorkerChecks`. A request is a batch: its number
and its count (4 bytes each, big-endian), then per check a 32-byte public key, a
64-byte signature, the length of the bytes it covers (4 bytes) and those bytes. The
answer is the request's number, then one byte per check, 1 when the signature
verifies, in order; the number lets the host tell that an answer is the one it waits
for. It exits when stdin closes, or on a
request it cannot read (the host then checks in-process and starts another helper).
"""

from __future__ import annotations

import signal
import struct
import sys
from typing import BinaryIO, Final

from agora.core.ed25519 import PUBLIC_KEY_BYTES as KEY_BYTES
from agora.core.ed25519 import SIGNATURE_BYTES, verifies

MAX_BATCH: Final = 65536
MAX_COVERED_BYTES: Final = 1 << 20
LENGTH: Final = struct.Struct(">I")
HEADER: Final = struct.Struct(">II")  # the request's number, how many checks


def encode_request(number: int, checks: list[tuple[bytes, bytes, bytes]]) -> bytes:
    """Request ``number``: a batch of (public key, signature, covered bytes) as the
    helper reads it. Raises ValueError for a key or a signature of the wrong size."""
    parts = [HEADER.pack(number, len(checks))]
    for key, signature, covered in checks:
        if len(key) != KEY_BYTES or len(signature) != SIGNATURE_BYTES:
            raise ValueError("an Ed25519 key is 32 bytes and a signature 64")
        parts += (key, signature, LENGTH.pack(len(covered)), covered)
    return b"".join(parts)


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    while True:
        header = requests.read(HEADER.size)
        if len(header) < HEADER.size:
            return  # the host closed the pipe
        number, count = HEADER.unpack(header)
        if count > MAX_BATCH:
            return
        verdicts = bytearray(LENGTH.pack(number))
        for _ in range(count):
            head = requests.read(KEY_BYTES + SIGNATURE_BYTES + LENGTH.size)
            if len(head) < KEY_BYTES + SIGNATURE_BYTES + LENGTH.size:
                return
            (size,) = LENGTH.unpack_from(head, KEY_BYTES + SIGNATURE_BYTES)
            if size > MAX_COVERED_BYTES:
                return
            covered = requests.read(size)
            if len(covered) < size:
                return
            key, signature = head[:KEY_BYTES], head[KEY_BYTES : KEY_BYTES + SIGNATURE_BYTES]
            verdicts.append(verifies(key, signature, covered))
        answers.write(bytes(verdicts))
        answers.flush()


if __name__ == "__main__":
    # A Ctrl-C in the host's terminal reaches this process too; the host stops it by
    # closing its stdin, so the interrupt is the host's to handle, not the helper's.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(sys.stdin.buffer, sys.stdout.buffer)
