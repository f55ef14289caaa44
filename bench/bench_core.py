"""Foundation benchmarks: signing, verifying, appending and `agora verify`.

Every figure is printed beside the bare Ed25519 rate measured in the same run, on the
same machine, so the ratio means something even on a noisy host. Nothing is asserted.

    python bench/bench_core.py [--facts 100000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.bindings import crypto_sign, crypto_sign_keypair, crypto_sign_open

from agora.core.acts import Performative
from agora.core.envelope import Act
from agora.core.factlog import FactLog
from agora.core.keys import KeyRegistry, Role, SigningKey
from agora.core.signing import pae, sign_fact, verify_envelope
from agora.core.verify import verify_directory

SAMPLE_SECONDS = 1.5
CORES = os.cpu_count() or 1


def rate(operation: Callable[[], object], *, seconds: float = SAMPLE_SECONDS) -> float:
    """Operations per second, running ``operation`` for about ``seconds``."""
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            operation()
        count += 200
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def make_act(index: int, sender: str) -> Act:
    return Act(
        id=f"act-{index}",
        conversation="conv-1",
        sender=sender,
        channel="build-coord",
        act=Performative.INFORM,
        payload=f"status update number {index}: the build is green on every target",
        hops=3,
        time_ms=1_700_000_000_000 + index,
        in_reply_to=f"act-{index - 1}" if index else None,
    )


def measure_log(
    count: int, agent: SigningKey, host: SigningKey, registry: KeyRegistry
) -> dict[str, float]:
    """Append ``count`` facts, then time `agora verify` on one process and on all cores."""
    results: dict[str, float] = {}
    workdir = Path(tempfile.mkdtemp(prefix="agora-bench-"))
    try:
        facts = workdir / "facts"
        envelopes = [
            (sign_fact(a, agent), a) for a in (make_act(i, "synth-agent") for i in range(count))
        ]
        start = time.perf_counter()
        with FactLog.open(facts, signer=host) as log:
            for index, (signed, act) in enumerate(envelopes, start=1):
                log.append(signed, act)
                if index % 10_000 == 0:
                    log.checkpoint()
        results["append_per_s"] = count / (time.perf_counter() - start)

        for label, jobs in (("agora_verify", 1), ("agora_verify_parallel", CORES)):
            start = time.perf_counter()
            report = verify_directory(facts, registry, jobs=jobs)
            elapsed = time.perf_counter() - start
            if not report.ok:
                raise SystemExit(f"the benchmark's own facts did not verify: {report.problem}")
            results[f"{label}_facts_per_s"] = report.entries / elapsed
            results[f"{label}_seconds"] = elapsed
        results["facts"] = report.entries
        results["cores"] = CORES
        results["log_bytes"] = (facts / "log.jsonl").stat().st_size
    finally:
        shutil.rmtree(workdir)

    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--facts", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()

    agent = SigningKey.generate("synth-agent")
    host = SigningKey.generate("host")
    registry = KeyRegistry(
        [agent.identity(Role.AGENT, ["build-coord"]), host.identity(Role.HOST, ["*"])]
    )
    sample = make_act(1, "synth-agent")
    message = pae("application/vnd.agora.act+json", sample.encode())

    # the bare rates of libsodium, which agora uses, and of OpenSSL for comparison
    bare_public, bare_secret = crypto_sign_keypair()
    bare_signed = crypto_sign(message, bare_secret)
    openssl_key = Ed25519PrivateKey.generate()
    openssl_public = openssl_key.public_key()
    openssl_signature = openssl_key.sign(message)
    results: dict[str, float] = {}
    results["bare_ed25519_sign_per_s"] = rate(lambda: crypto_sign(message, bare_secret))
    results["bare_ed25519_verify_per_s"] = rate(lambda: crypto_sign_open(bare_signed, bare_public))
    results["openssl_ed25519_sign_per_s"] = rate(lambda: openssl_key.sign(message))
    results["openssl_ed25519_verify_per_s"] = rate(
        lambda: openssl_public.verify(openssl_signature, message)
    )

    envelope = sign_fact(sample, agent)
    results["envelope_sign_per_s"] = rate(lambda: sign_fact(sample, agent))
    results["envelope_verify_per_s"] = rate(lambda: verify_envelope(envelope, registry))

    results.update(measure_log(arguments.facts, agent, host, registry))
    bare_verify = results["bare_ed25519_verify_per_s"]
    results["verify_vs_bare_ratio"] = results["agora_verify_facts_per_s"] / bare_verify
    results["verify_parallel_vs_bare_ratio"] = (
        results["agora_verify_parallel_facts_per_s"] / bare_verify
    )
    if arguments.json:
        print(json.dumps(results, sort_keys=True))
        return
    print(f"{'bare Ed25519 sign (libsodium)':<42}{results['bare_ed25519_sign_per_s']:>10,.0f} /s")
    print(
        f"{'bare Ed25519 verify (libsodium), 1 core':<42}{bare_verify:>10,.0f} /s   (the baseline)"
    )
    for what in ("sign", "verify"):
        label = f"bare Ed25519 {what} (OpenSSL, not used)"
        print(f"{label:<42}{results[f'openssl_ed25519_{what}_per_s']:>10,.0f} /s")
    print(f"{'envelope sign (DSSE)':<42}{results['envelope_sign_per_s']:>10,.0f} /s")
    print(f"{'envelope verify (DSSE + decode)':<42}{results['envelope_verify_per_s']:>10,.0f} /s")
    print(f"{'fact log append':<42}{results['append_per_s']:>10,.0f} /s")
    facts = f"{results['facts']:,.0f} facts"
    for label, name, ratio in (
        ("agora_verify", f"agora verify, {facts}, 1 process", "verify_vs_bare_ratio"),
        (
            "agora_verify_parallel",
            f"agora verify, {facts}, {CORES} processes",
            "verify_parallel_vs_bare_ratio",
        ),
    ):
        print(
            f"{name:<42}{results[label + '_facts_per_s']:>10,.0f} /s   "
            f"({results[label + '_seconds']:.2f} s, {results[ratio]:.0%} of one core's bare "
            "verify; goal 75%)"
        )


if __name__ == "__main__":
    main()
