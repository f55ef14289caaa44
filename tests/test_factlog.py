"""The facts directory: cheap appends, checkpoints, crash recovery, one writer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from agora.core.errors import ConfigError
from agora.core.factlog import CHECKPOINT_DIR, LOG_FILE, VIEW_FILE, FactLog, checkpoint_name
from agora.core.keys import KeyRegistry, SigningKey
from agora.core.rivet import VIEW_HEADER
from agora.core.signing import sign_fact
from agora.core.verify import verify_directory
from tests.conftest import FactsBuilder
from tests.factories import make_act


def test_built_log_verifies(build_facts: FactsBuilder, registry: KeyRegistry) -> None:
    report = verify_directory(build_facts(12), registry)
    assert report.ok, report.problem
    assert (report.entries, report.acts, report.events, report.checkpoints) == (12, 9, 3, 3)


def test_appending_only_adds_to_the_end(
    build_facts: FactsBuilder, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    directory = build_facts(6)
    before = {name: (directory / name).read_bytes() for name in (LOG_FILE, VIEW_FILE)}
    inode = (directory / LOG_FILE).stat().st_ino
    with FactLog.open(directory, signer=keys["host"]) as log:
        act = make_act(sender="relay-agent")
        assert log.append(sign_fact(act, keys["relay-agent"]), act) == 6
    for name, old in before.items():
        assert (directory / name).read_bytes().startswith(old)
    assert (directory / LOG_FILE).stat().st_ino == inode
    assert verify_directory(directory, registry).entries == 7


def test_reopened_log_continues_the_same_tree(
    build_facts: FactsBuilder, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    directory = build_facts(5)
    with FactLog.open(directory, signer=keys["host"]) as log:
        assert log.size == 5
        for _ in range(4):
            act = make_act()
            log.append(sign_fact(act, keys["synth-agent"]), act)
    report = verify_directory(directory, registry)
    assert report.ok, report.problem
    assert report.size == 9


def test_torn_last_line_from_a_crash_is_trimmed(
    build_facts: FactsBuilder, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    directory = build_facts(5)
    with (directory / LOG_FILE).open("ab") as file:
        file.write(b'{"index":5,"envelope":{"payl')
    FactLog.open(directory, signer=keys["host"]).close()
    report = verify_directory(directory, registry)
    assert report.ok, report.problem
    assert report.entries == 5


def test_a_tail_a_machine_crash_spoiled_is_cut_back_to_the_newest_checkpoint(
    build_facts: FactsBuilder, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    # Entries 5-9 were written and never synced when the machine stopped: the disk kept
    # 8 and 9 but not 7, whose block reads as zeros. The checkpoint over 10 was never
    # written (it syncs first).
    directory = build_facts(10, every=5)
    (directory / CHECKPOINT_DIR / checkpoint_name(10)).unlink()
    log_file = directory / LOG_FILE
    lines = log_file.read_bytes().splitlines(keepends=True)
    zeros = b"\0" * (len(lines[7]) - 1) + b"\n"
    log_file.write_bytes(b"".join([*lines[:7], zeros, *lines[8:]]))
    with FactLog.open(directory, signer=keys["host"]) as log:
        assert (log.size, log.cut_entries) == (7, 3)  # 7 and all after it, to be recorded again
    assert log_file.read_bytes() == b"".join(lines[:7])
    report = verify_directory(directory, registry)
    assert report.ok, report.problem
    with FactLog.open(directory, signer=keys["host"]) as log:
        assert (log.size, log.cut_entries) == (7, 0)


def test_view_behind_the_log_is_rebuilt(
    build_facts: FactsBuilder, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    directory = build_facts(5)
    view = directory / VIEW_FILE
    text = view.read_bytes()
    view.write_bytes(text[: text.rfind(b"\n- id: ") + 1])  # a crash between the two writes
    assert not verify_directory(directory, registry).ok
    FactLog.open(directory, signer=keys["host"]).close()
    assert verify_directory(directory, registry).ok
    assert view.read_bytes() == text


@pytest.mark.parametrize("kept", ["nothing", "no file", "the header", "half a block"])
def test_a_view_lost_in_a_machine_crash_is_rebuilt(
    build_facts: FactsBuilder, keys: dict[str, SigningKey], registry: KeyRegistry, kept: str
) -> None:
    # between checkpoints the view is not fsynced: after a machine crash any prefix
    # of it may be all that is left
    directory = build_facts(5)
    view = directory / VIEW_FILE
    text = view.read_bytes()
    if kept == "no file":
        view.unlink()
    else:
        cut = {"nothing": 0, "the header": len(VIEW_HEADER), "half a block": len(text) - 40}
        view.write_bytes(text[: cut[kept]])
    FactLog.open(directory, signer=keys["host"]).close()
    assert view.read_bytes() == text
    assert verify_directory(directory, registry).ok


def test_a_view_damaged_since_the_last_checkpoint_is_rebuilt(
    build_facts: FactsBuilder, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    # a checkpoint at 5 entries; the crash came before the one at 8, and left zeros in
    # the view where entry 6 was (its last block, entry 7's, is intact)
    directory = build_facts(8, every=5)
    (directory / CHECKPOINT_DIR / checkpoint_name(8)).unlink()
    view = directory / VIEW_FILE
    text = view.read_bytes()
    *_, seventh, eighth = (i for i in range(len(text)) if text.startswith(b"\n- id: ", i))
    hole = slice(seventh + 10, eighth - 10)  # inside entry 6's block
    damaged = text[: hole.start] + bytes(hole.stop - hole.start) + text[hole.stop :]
    view.write_bytes(damaged)
    FactLog.open(directory, signer=keys["host"]).close()
    assert view.read_bytes() == text
    assert verify_directory(directory, registry).ok


def test_a_sync_makes_the_log_durable_and_a_checkpoint_the_view_too(
    tmp_path: Path, keys: dict[str, SigningKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(Path(f"/proc/self/fd/{fd}").readlink().name)
        real_fsync(fd)

    log = FactLog.open(tmp_path / "facts", signer=keys["host"])
    act = make_act()
    log.append(sign_fact(act, keys["synth-agent"]), act)
    monkeypatch.setattr(os, "fsync", fsync)
    log.sync()
    assert synced == [LOG_FILE]
    assert (tmp_path / "facts" / VIEW_FILE).stat().st_size > len(VIEW_HEADER)  # handed over
    synced.clear()
    log.checkpoint()
    assert {LOG_FILE, VIEW_FILE} <= set(synced)
    monkeypatch.undo()
    log.close()


def test_only_one_writer_at_a_time(tmp_path: Path, keys: dict[str, SigningKey]) -> None:
    with (
        FactLog.open(tmp_path / "facts", signer=keys["host"]),
        pytest.raises(ConfigError, match="being written by another process"),
    ):
        FactLog.open(tmp_path / "facts", signer=keys["host"])


def test_view_is_rivet_shaped_yaml(build_facts: FactsBuilder) -> None:
    document = yaml.safe_load((build_facts(8) / VIEW_FILE).read_text())
    assert list(document) == ["artifacts"]
    first, second = document["artifacts"][:2]
    assert {"id", "type", "title", "fields"} <= first.keys()
    assert first["type"] == "coordination-fact"
    assert second["links"] == [{"type": "replies-to", "target": first["id"]}]
    event = document["artifacts"][3]
    assert event["type"] == "coordination-event"
    assert event["links"] == [{"type": "concerns", "target": document["artifacts"][2]["id"]}]


def test_rivet_project_files_declare_the_types(build_facts: FactsBuilder) -> None:
    directory = build_facts(1)
    project = yaml.safe_load((directory / "rivet.yaml").read_text())
    schema = yaml.safe_load((directory / "schemas" / "agora.yaml").read_text())
    assert project["sources"] == [{"path": "coordination.yaml", "format": "generic-yaml"}]
    assert "agora" in project["project"]["schemas"]
    assert {t["name"] for t in schema["artifact-types"]} == {
        "coordination-fact",
        "coordination-event",
    }
    assert {t["name"] for t in schema["link-types"]} == {"replies-to", "concerns"}


def test_checkpoint_is_written_durably_and_only_when_the_log_grew(
    tmp_path: Path, keys: dict[str, SigningKey]
) -> None:
    with FactLog.open(tmp_path / "facts", signer=keys["host"]) as log:
        act = make_act()
        log.append(sign_fact(act, keys["synth-agent"]), act)
        log.checkpoint()
        log.checkpoint()
    names = sorted(path.name for path in (tmp_path / "facts" / "checkpoints").iterdir())
    assert names == ["0000000000000001.note"]


@pytest.mark.parametrize(
    "damage",
    [b'{"index":3,"envelope":{"payload":"e30="}}\n', b'{"index":3,"envelope":[]}\n'],
    ids=["no-payload-type", "no-object"],
)
def test_a_damaged_line_is_named_and_the_directory_left_unlocked(
    build_facts: FactsBuilder, keys: dict[str, SigningKey], damage: bytes
) -> None:
    directory = build_facts(6)
    log_file = directory / LOG_FILE
    lines = log_file.read_bytes().splitlines(keepends=True)
    log_file.write_bytes(b"".join([*lines[:3], damage, *lines[4:]]))
    (directory / VIEW_FILE).unlink()  # the view is read again from the log
    with pytest.raises(ConfigError, match=f"facts directory {directory}: .*entry 3"):
        FactLog.open(directory, signer=keys["host"])
    log_file.write_bytes(b"".join(lines))  # put right, it opens in the same process
    with FactLog.open(directory, signer=keys["host"]) as log:
        assert log.size == 6


def test_a_note_not_named_by_its_size_is_no_checkpoint(
    build_facts: FactsBuilder, keys: dict[str, SigningKey]
) -> None:
    directory = build_facts(6, every=3)
    (directory / CHECKPOINT_DIR / "latest.note").write_text("not a checkpoint\n")
    with FactLog.open(directory, signer=keys["host"]) as log:
        assert log.size == 6


def test_a_log_shorter_than_its_newest_checkpoint_is_not_written_to(
    build_facts: FactsBuilder, keys: dict[str, SigningKey]
) -> None:
    """Facts a checkpoint covered are gone (a log rolled back, with its checkpoints
    kept): appending would hide the loss under new entries."""
    directory = build_facts(6, every=3)
    log_file = directory / LOG_FILE
    whole = log_file.read_bytes()
    log_file.write_bytes(b"".join(whole.splitlines(keepends=True)[:4]))
    with pytest.raises(ConfigError, match="holds 4 entries, but a checkpoint was signed over 6"):
        FactLog.open(directory, signer=keys["host"])
    log_file.write_bytes(whole)
    with FactLog.open(directory, signer=keys["host"]) as log:
        assert log.size == 6
