"""Mutation suite: every way of tampering with a facts directory fails verification."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agora.core.checkpoint import Checkpoint
from agora.core.envelope import Act, decode_fact
from agora.core.factlog import (
    CHECKPOINT_DIR,
    LOG_FILE,
    VIEW_FILE,
    FactLog,
    checkpoint_name,
    entry_line,
)
from agora.core.keys import KeyRegistry, Role, SigningKey
from agora.core.merkle import leaf_hash, root_of
from agora.core.signing import sign_fact
from agora.core.verify import PARALLEL_FROM_ENTRIES, Extends, verify_directory
from tests.conftest import FactsBuilder
from tests.factories import make_act, make_event

ENTRIES = 12


def _lines(directory: Path) -> list[bytes]:
    return (directory / LOG_FILE).read_bytes().splitlines()


def _write_lines(directory: Path, lines: list[bytes]) -> None:
    (directory / LOG_FILE).write_bytes(b"".join(line + b"\n" for line in lines))


def _fails(directory: Path, registry: KeyRegistry) -> str:
    report = verify_directory(directory, registry)
    assert not report.ok, "a tampered facts directory verified"
    return str(report.problem)


@pytest.fixture
def facts(build_facts: FactsBuilder, registry: KeyRegistry) -> Path:
    directory = build_facts(ENTRIES, every=4)
    assert verify_directory(directory, registry).ok
    return directory


@pytest.mark.parametrize("entry", range(ENTRIES))
def test_a_flipped_byte_anywhere_in_any_envelope_fails(
    facts: Path, registry: KeyRegistry, entry: int
) -> None:
    original = _lines(facts)
    start = original[entry].index(b'"envelope":') + len(b'"envelope":')
    for position in range(start, len(original[entry]), 7):
        lines = [*original]
        mutated = bytearray(lines[entry])
        mutated[position] ^= 0x01
        lines[entry] = bytes(mutated)
        _write_lines(facts, lines)
        assert f"entry {entry}" in _fails(facts, registry) or "checkpoint" in _fails(
            facts, registry
        )


def test_a_removed_entry_fails_naming_it(facts: Path, registry: KeyRegistry) -> None:
    lines = _lines(facts)
    del lines[5]
    _write_lines(facts, lines)
    assert "entry 5" in _fails(facts, registry)


def test_a_reordered_pair_fails(facts: Path, registry: KeyRegistry) -> None:
    lines = _lines(facts)
    lines[6], lines[7] = lines[7], lines[6]
    _write_lines(facts, lines)
    assert "entry 6" in _fails(facts, registry)


def test_a_reordered_pair_with_rewritten_indices_fails(facts: Path, registry: KeyRegistry) -> None:
    lines = _lines(facts)
    envelopes = [json.loads(line)["envelope"] for line in lines]
    envelopes[8], envelopes[9] = envelopes[9], envelopes[8]
    _write_lines(
        facts,
        [
            entry_line(i, json.dumps(e, separators=(",", ":")).encode())
            for i, e in enumerate(envelopes)
        ],
    )
    assert "checkpoint" in _fails(facts, registry) or "entry" in _fails(facts, registry)


def test_an_entry_re_signed_with_an_unknown_key_fails(facts: Path, registry: KeyRegistry) -> None:
    lines = _lines(facts)
    document = json.loads(lines[4])
    act = Act.decode(base64.b64decode(document["envelope"]["payload"]))
    impostor = SigningKey.generate(act.sender)
    lines[4] = entry_line(4, sign_fact(act, impostor))
    _write_lines(facts, lines)
    assert "entry 4" in _fails(facts, registry)
    assert "no identity holds" in _fails(facts, registry)


def test_a_truncated_log_fails(facts: Path, registry: KeyRegistry) -> None:
    _write_lines(facts, _lines(facts)[:-2])
    assert "entries were removed" in _fails(facts, registry)


def test_a_log_cut_mid_line_fails(facts: Path, registry: KeyRegistry) -> None:
    data = (facts / LOG_FILE).read_bytes()
    (facts / LOG_FILE).write_bytes(data[:-10])
    assert "incomplete" in _fails(facts, registry)


def test_a_forged_checkpoint_fails(facts: Path, registry: KeyRegistry) -> None:
    forger = SigningKey.generate("host")
    latest = sorted((facts / CHECKPOINT_DIR).iterdir())[-1]
    latest.write_bytes(Checkpoint("agora/facts", ENTRIES, b"\x00" * 32).sign(forger))
    assert "checkpoint" in _fails(facts, registry)


def test_a_checkpoint_with_a_flipped_root_fails(facts: Path, registry: KeyRegistry) -> None:
    latest = sorted((facts / CHECKPOINT_DIR).iterdir())[-1]
    note = latest.read_text().split("\n")
    note[2] = ("B" if note[2][0] != "B" else "C") + note[2][1:]
    latest.write_text("\n".join(note))
    assert "checkpoint" in _fails(facts, registry)


def test_history_rewritten_by_the_real_host_key_fails(
    facts: Path, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    """Even the host's own key cannot rewrite the past while earlier checkpoints are
    kept: they pin it. (All of them written again: see the checkpoint from outside.)"""
    lines = _lines(facts)
    first = json.loads(lines[0])["envelope"]
    original = Act.decode(base64.b64decode(first["payload"]))
    rewritten = make_act(sender=original.sender, payload="a different past", act_id=original.id)
    lines[0] = entry_line(0, sign_fact(rewritten, keys[original.sender]))
    _write_lines(facts, lines)
    latest = sorted((facts / CHECKPOINT_DIR).iterdir())[-1]
    new_root = root_of([leaf_hash(line) for line in lines])
    latest.write_bytes(Checkpoint("agora/facts", ENTRIES, new_root).sign(keys["host"]))
    (facts / VIEW_FILE).unlink()
    FactLog.open(facts, signer=keys["host"]).close()  # regenerates a matching view
    problem = _fails(facts, registry)
    assert "0000000000000004.note" in problem
    assert "the log was changed" in problem


def _newest_note(directory: Path) -> Extends:
    newest = sorted((directory / CHECKPOINT_DIR).iterdir())[-1]
    return Extends(f"--extends {newest.name}", newest.read_bytes())


def _rewrite(directory: Path, envelopes: list[bytes], host: SigningKey) -> None:
    """The directory written afresh from ``envelopes`` by the holder of the host's key:
    log, view and every checkpoint, each as the host itself would write them."""
    for path in (directory / CHECKPOINT_DIR).iterdir():
        path.unlink()
    (directory / LOG_FILE).unlink()
    (directory / VIEW_FILE).unlink()
    with FactLog.open(directory, signer=host) as log:
        for envelope in envelopes:
            fields = json.loads(envelope)
            body = base64.b64decode(fields["payload"])
            log.append(envelope, decode_fact(fields["payloadType"], body))
        log.checkpoint()


def _envelopes(directory: Path) -> list[bytes]:
    """The log's envelopes, byte for byte as it holds them."""
    return [line[line.index(b'"envelope":') + 11 : -1] for line in _lines(directory)]


def test_a_log_cut_back_passes_alone_but_not_against_a_checkpoint_from_outside(
    facts: Path, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    # The directory alone cannot show it lost its end: written afresh without it (no
    # key needed to cut a log at a checkpoint, here with the host's for brevity), every
    # check of its own holds. The newest checkpoint the main branch held shows it.
    before = _newest_note(facts)
    _rewrite(facts, _envelopes(facts)[:5], keys["host"])
    assert verify_directory(facts, registry).ok
    report = verify_directory(facts, registry, extends=before)
    assert report.problem is not None and report.problem.where == before.where
    assert "covers 12 entries but the log holds 5: the log was cut back" in str(report.problem)


def test_history_written_afresh_with_the_host_key_fails_against_a_checkpoint_from_outside(
    facts: Path, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    # What the agents said after the first three facts replaced by the host's own
    # events, every checkpoint signed again: only a checkpoint kept elsewhere pins the
    # past.
    before = _newest_note(facts)
    events = [sign_fact(make_event(), keys["host"]) for _ in range(ENTRIES)]
    _rewrite(facts, [*_envelopes(facts)[:3], *events], keys["host"])
    assert verify_directory(facts, registry).ok
    problem = str(verify_directory(facts, registry, extends=before).problem)
    assert "is not the root of the log's first 12 entries: the log does not extend it" in problem


def test_a_log_that_grew_extends_its_earlier_checkpoint(
    facts: Path, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    before = _newest_note(facts)
    with FactLog.open(facts, signer=keys["host"]) as log:
        act = make_act(payload="later")
        log.append(sign_fact(act, keys["synth-agent"]), act)
        log.checkpoint()
    report = verify_directory(facts, registry, extends=before)
    assert report.ok, report.problem
    assert report.size == ENTRIES + 1


def test_a_checkpoint_to_extend_must_be_signed_and_of_the_same_log(
    facts: Path, build_facts: FactsBuilder, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    forged = Checkpoint("agora/facts", 4, b"\x00" * 32).sign(SigningKey.generate("host"))
    problem = str(verify_directory(facts, registry, extends=Extends("--extends f", forged)).problem)
    assert problem.startswith("--extends f: is not a checkpoint to extend")
    other = build_facts(ENTRIES, every=4, name="other")  # the same keys, other facts
    problem = str(verify_directory(facts, registry, extends=_newest_note(other)).problem)
    assert "does not extend it" in problem
    elsewhere = Checkpoint("other/origin", 4, b"\x00" * 32).sign(keys["host"])
    problem = str(verify_directory(facts, registry, extends=Extends("n", elsewhere)).problem)
    assert "it is another log" in problem


def test_entries_after_the_last_checkpoint_fail(
    facts: Path, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    act = make_act()
    lines = [*_lines(facts), entry_line(ENTRIES, sign_fact(act, keys["synth-agent"]))]
    _write_lines(facts, lines)
    assert f"entry {ENTRIES}" in _fails(facts, registry)


def test_an_act_on_an_ungranted_channel_fails(
    tmp_path: Path, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    with FactLog.open(tmp_path / "facts", signer=keys["host"]) as log:
        act = make_act(sender="synth-agent", channel="secret-ops")
        log.append(sign_fact(act, keys["synth-agent"]), act)
    assert "not granted channel 'secret-ops'" in _fails(tmp_path / "facts", registry)


def test_an_event_signed_by_an_agent_fails(
    tmp_path: Path, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    with FactLog.open(tmp_path / "facts", signer=keys["host"]) as log:
        event = make_event(actor="synth-agent")
        log.append(sign_fact(event, keys["synth-agent"]), event)
    assert "only bridge, host identities record it" in _fails(tmp_path / "facts", registry)


def test_a_repeated_id_fails(
    tmp_path: Path, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    with FactLog.open(tmp_path / "facts", signer=keys["host"]) as log:
        for _ in range(2):
            act = make_act(act_id="same-id")
            log.append(sign_fact(act, keys["synth-agent"]), act)
    assert "id 'same-id' appears twice" in _fails(tmp_path / "facts", registry)


def test_a_reply_to_nothing_recorded_fails(
    tmp_path: Path, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    with FactLog.open(tmp_path / "facts", signer=keys["host"]) as log:
        act = make_act(in_reply_to="never-recorded")
        log.append(sign_fact(act, keys["synth-agent"]), act)
    assert "not an earlier fact" in _fails(tmp_path / "facts", registry)


def test_an_event_over_a_batch_with_one_later_subject_fails(
    tmp_path: Path, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    with FactLog.open(tmp_path / "facts", signer=keys["host"]) as log:
        first, later = make_act(act_id="first"), make_act(act_id="later")
        log.append(sign_fact(first, keys["synth-agent"]), first)
        event = make_event(subjects=("first", "later"))
        log.append(sign_fact(event, keys["host"]), event)
        log.append(sign_fact(later, keys["synth-agent"]), later)
    assert "refers to 'later', which is not an earlier fact" in _fails(tmp_path / "facts", registry)


def test_an_edited_view_fails(facts: Path, registry: KeyRegistry) -> None:
    view = facts / VIEW_FILE
    view.write_text(view.read_text().replace("message 5", "message five"))
    assert "coordination.yaml" in _fails(facts, registry)


def test_verify_command_exit_codes_and_first_bad_entry(
    facts: Path, registry: KeyRegistry, tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys.yaml"
    registry.save(keys_file)
    agora = Path(sys.executable).parent / "agora"
    good = subprocess.run(
        [agora, "verify", facts, "--keys", keys_file], capture_output=True, text=True, check=False
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.startswith("OK")
    lines = _lines(facts)
    lines[3] = lines[3].replace(b'"payload":"', b'"payload":"A', 1)
    _write_lines(facts, lines)
    bad = subprocess.run(
        [agora, "verify", facts, "--keys", keys_file, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    problem = json.loads(bad.stdout)["problem"]
    assert problem["index"] == 3
    assert problem["where"] == "entry 3"


def test_verify_command_checks_the_log_extends_a_checkpoint_it_is_given(
    facts: Path, keys: dict[str, SigningKey], registry: KeyRegistry, tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys.yaml"
    registry.save(keys_file)
    note = tmp_path / "main.note"
    note.write_bytes(_newest_note(facts).note)
    agora = Path(sys.executable).parent / "agora"

    def verify(*extra: object) -> subprocess.CompletedProcess[str]:
        command = [agora, "verify", facts, "--keys", keys_file, *extra]
        return subprocess.run(command, capture_output=True, text=True, check=False)

    good = verify("--extends", note)
    assert good.returncode == 0 and good.stdout.startswith("OK"), good.stdout + good.stderr
    _rewrite(facts, _envelopes(facts)[:8], keys["host"])
    assert verify().returncode == 0
    cut = verify("--extends", note)
    assert cut.returncode == 1
    assert cut.stdout.startswith(f"FAIL {facts}: --extends {note}: covers 12 entries")
    missing = verify("--extends", tmp_path / "nowhere.note", "--json")
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["problem"]["message"].startswith("cannot be read")


def test_parallel_verify_finds_the_same_first_problem(
    tmp_path: Path, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    directory = tmp_path / "large"
    count = PARALLEL_FROM_ENTRIES + 1_000
    with FactLog.open(directory, signer=keys["host"]) as log:
        for _ in range(count):
            act = make_act()
            log.append(sign_fact(act, keys["synth-agent"]), act)
    parallel = verify_directory(directory, registry, jobs=2)
    assert parallel.ok, parallel.problem
    assert parallel.entries == count
    lines = _lines(directory)
    bad = count - 500
    lines[bad] = lines[bad].replace(b'"sig":"', b'"sig":"AAAA', 1)
    _write_lines(directory, lines)
    sequential = verify_directory(directory, registry, jobs=1)
    parallel = verify_directory(directory, registry, jobs=2)
    assert sequential.problem == parallel.problem
    assert parallel.problem is not None
    assert parallel.problem.index == bad


def test_a_retired_key_verifies_what_it_signed_and_nothing_after(
    build_facts: FactsBuilder, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    # The host's key replaced after entry 7: its events and checkpoints up to there
    # still verify, under the new registry, and what the new key signs after them.
    facts = build_facts(8, every=4)
    old_host, new_host = keys["host"], SigningKey.generate("host")
    rotated = _rotated(registry, facts, new_host)
    with FactLog.open(facts, signer=new_host) as log:
        act = make_act(payload="after the rotation")
        log.append(sign_fact(act, keys["synth-agent"]), act)
        event = make_event(subjects=(act.id,))
        log.append(sign_fact(event, new_host), event)
    report = verify_directory(facts, rotated)
    assert report.ok, report.problem
    assert report.checkpoints == 3 and report.signers["host"] == 3
    # without the old key in the registry, the past no longer verifies
    only_new = registry.with_identity(new_host.identity(Role.HOST, ["*"]))
    problem = str(verify_directory(facts, only_new).problem)
    assert problem.startswith(f"{CHECKPOINT_DIR}/{checkpoint_name(4)}: checkpoint carries no")

    late = make_event(subjects=(act.id,))
    with FactLog.open(facts, signer=new_host) as log:
        log.append(sign_fact(late, old_host), late)
    problem = str(verify_directory(facts, rotated).problem)
    assert problem == (
        "entry 10: envelope is signed with a retired key of 'host', valid for the log's "
        "entries up to 7 only (this is entry 10)"
    )


def test_a_checkpoint_by_a_retired_key_holds_only_over_what_it_signed(
    build_facts: FactsBuilder, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    facts = build_facts(8, every=4)
    new_host = SigningKey.generate("host")
    rotated = _rotated(registry, facts, new_host, entries=6)
    # signed at 8 by the key retired after entry 5: not a checkpoint it could sign
    problem = str(verify_directory(facts, rotated).problem)
    assert problem.startswith(f"{CHECKPOINT_DIR}/{checkpoint_name(8)}: checkpoint carries no")


def test_a_retired_key_cannot_sign_other_facts_in_the_place_of_those_it_signed(
    build_facts: FactsBuilder, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    # The committed log held 5 entries; the host's log held 10 when its key, leaked, was
    # retired. Whoever has the old key writes entries 5-9 afresh and checkpoints them:
    # every rule of the directory holds, and it extends what was committed, but those
    # are not the entries the key was retired over.
    facts = build_facts(10, every=5)
    committed = Extends("main.note", (facts / CHECKPOINT_DIR / checkpoint_name(5)).read_bytes())
    rotated = _rotated(registry, facts, SigningKey.generate("host"))
    assert verify_directory(facts, rotated, extends=committed).ok
    forged = [sign_fact(make_event(), keys["host"]) for _ in range(5)]
    _rewrite(facts, [*_envelopes(facts)[:5], *forged], keys["host"])
    assert verify_directory(facts, registry, extends=committed).ok  # as it was before
    problem = verify_directory(facts, rotated, extends=committed).problem
    assert problem is not None and problem.index == 9
    assert "first 10 entries are not those it held when the key" in problem.message


def _rotated(
    registry: KeyRegistry, facts: Path, new_host: SigningKey, *, entries: int | None = None
) -> KeyRegistry:
    """``registry`` with the host's key replaced by ``new_host``'s after the first
    ``entries`` of the log in ``facts`` (default: all it holds), as `agora keys rotate`
    does it."""
    leaves = [leaf_hash(line) for line in _lines(facts)][:entries]
    retired = registry.get("host").retire_key(
        new_host.public_key, last_entry=len(leaves) - 1, root=root_of(leaves), at_ms=0
    )
    return registry.with_identity(retired)
