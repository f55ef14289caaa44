"""`agora keys`: private keys 0600 and never printed; a registry that is safe to commit."""

from __future__ import annotations

import base64
import hashlib
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agora.core.errors import ConfigError, UnknownKey
from agora.core.factlog import FactLog
from agora.core.keys import (
    KeyRegistry,
    Role,
    SigningKey,
    read_private_key,
    read_private_key_file,
)
from agora.core.signing import sign_fact, verify_envelope
from tests.factories import make_act

AGORA = Path(sys.executable).parent / "agora"


def _agora(cwd: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGORA, *arguments], cwd=cwd, capture_output=True, text=True, check=False)


def test_keys_new_writes_a_private_file_0600_and_registers_the_public_half(tmp_path: Path) -> None:
    result = _agora(tmp_path, "keys", "new", "synth-agent", "--channel", "build-coord")
    assert result.returncode == 0, result.stderr
    path = tmp_path / ".agora" / "keys" / "synth-agent.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    registry = KeyRegistry.load(tmp_path / "keys.yaml")
    identity = registry.get("synth-agent")
    assert identity.role is Role.AGENT
    assert identity.channels == {"build-coord"}
    key = read_private_key(tmp_path / ".agora" / "keys", "synth-agent")
    assert key.public_key == identity.public_key


def test_the_private_key_is_never_printed(tmp_path: Path) -> None:
    result = _agora(tmp_path, "keys", "new", "host", "--role", "host", "--channel", "*")
    pem = (tmp_path / ".agora" / "keys" / "host.key").read_text()
    secret_lines = [line for line in pem.splitlines() if not line.startswith("-----")]
    output = result.stdout + result.stderr
    assert all(line not in output for line in secret_lines)
    assert "PRIVATE KEY" not in output
    assert "SigningKey(name='host'" in repr(read_private_key(tmp_path / ".agora" / "keys", "host"))
    assert base64.b64encode(b"x").decode() not in repr(
        read_private_key(tmp_path / ".agora" / "keys", "host")
    )


def test_private_key_folder_is_ignored_by_git(tmp_path: Path) -> None:
    _agora(tmp_path, "keys", "new", "synth-agent")
    assert (tmp_path / ".agora" / "keys" / ".gitignore").read_text().splitlines()[-1] == "*"


def test_an_existing_name_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    _agora(tmp_path, "keys", "new", "synth-agent")
    before = (tmp_path / "keys.yaml").read_bytes()
    result = _agora(tmp_path, "keys", "new", "synth-agent")
    assert result.returncode == 1
    assert "already in keys.yaml" in result.stderr
    assert (tmp_path / "keys.yaml").read_bytes() == before


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["keys", "new", "a.b"], "key name 'a.b' is not allowed"),
        (["keys", "new", "x", "--channel", "a>b"], "channel 'a>b' is not allowed"),
        (["keys", "new", "x", "--channel", "*"], "'\\*' is not allowed"),
    ],
)
def test_bad_names_are_refused_with_the_rule(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    result = _agora(tmp_path, *arguments)
    assert result.returncode == 1
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "keys.yaml").exists()
    assert not list(tmp_path.glob(".agora/keys/*.key"))


def test_a_readable_private_key_is_refused(tmp_path: Path) -> None:
    _agora(tmp_path, "keys", "new", "synth-agent")
    path = tmp_path / ".agora" / "keys" / "synth-agent.key"
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_private_key(tmp_path / ".agora" / "keys", "synth-agent")


def test_keys_new_into_a_missing_folder_leaves_nothing_behind(tmp_path: Path) -> None:
    result = _agora(tmp_path, "keys", "new", "z", "--registry", "nodir/keys.yaml")
    assert result.returncode == 1
    assert "agora: key registry nodir/keys.yaml: its folder nodir does not exist" in result.stderr
    assert not (tmp_path / ".agora" / "keys" / "z.key").exists()
    assert "Traceback" not in result.stderr


def test_an_encrypted_private_key_is_refused_with_why(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "locked.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
    )
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="is encrypted: agora reads unencrypted"):
        read_private_key_file(path, "locked")


def test_a_registry_naming_an_identity_twice_or_unreadable_is_refused(tmp_path: Path) -> None:
    _agora(tmp_path, "keys", "new", "synth-agent")
    registry = tmp_path / "keys.yaml"
    text = registry.read_text()
    entry = text[text.index("  synth-agent:") :]
    registry.write_text(text + entry.replace("synth-agent:", "synth-agent:", 1))
    with pytest.raises(ConfigError, match="found the key 'synth-agent' twice"):
        KeyRegistry.load(registry)
    with pytest.raises(ConfigError, match="cannot be read"):
        KeyRegistry.load(tmp_path)  # a folder


def test_a_missing_private_key_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(UnknownKey, match="agora keys new ghost"):
        read_private_key(tmp_path, "ghost")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"people": {}}, "expected one top-level key 'identities'"),
        ({"identities": {"a": {"role": "king", "public_key": "AA=="}}}, "role is 'king'"),
        ({"identities": {"a": {"role": "agent", "public_key": "AA=="}}}, "32 raw Ed25519 bytes"),
        (
            {
                "identities": {
                    "a": {"role": "agent", "public_key": "A" * 43 + "=", "channels": ["*"]}
                }
            },
            "not allowed",
        ),
        ({"identities": {"a": {"role": "agent", "pubkey": "x"}}}, "unexpected keys \\['pubkey'\\]"),
    ],
)
def test_bad_registries_name_the_key_and_the_expectation(document: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        KeyRegistry.from_document(document, source="keys.yaml")


def test_agents_cannot_be_granted_every_channel() -> None:
    document = {
        "identities": {"a": {"role": "agent", "public_key": "A" * 43 + "=", "channels": ["*"]}}
    }
    with pytest.raises(ConfigError, match="channels"):
        KeyRegistry.from_document(document)


def test_a_keyed_digest_is_the_same_for_its_key_and_no_one_elses() -> None:
    key = SigningKey.generate("host")
    same = SigningKey(key.name, key.private_key)  # the same key, read again
    other = SigningKey.generate("host")  # the same name, another key
    data = b"host\nagent\nself-echo\nbuild-coord\n17"
    assert key.keyed_digest(data) == same.keyed_digest(data)
    assert key.keyed_digest(data) != other.keyed_digest(data)
    assert key.keyed_digest(data) != key.keyed_digest(data + b"8")
    assert key.keyed_digest(data) != hashlib.sha256(data).hexdigest()
    assert "digest" not in repr(key)


def test_a_retired_key_is_kept_in_the_registry_and_refused_for_anything_new(
    tmp_path: Path,
) -> None:
    old, new = SigningKey.generate("synth-agent"), SigningKey.generate("synth-agent")
    identity = old.identity(Role.AGENT, ["build-coord"]).retire_key(
        new.public_key, last_entry=41, root=b"\x07" * 32, at_ms=1_764_800_000_000
    )
    path = tmp_path / "keys.yaml"
    KeyRegistry([identity]).save(path)
    loaded = KeyRegistry.load(path)
    assert loaded.get("synth-agent") == identity
    KeyRegistry.load(path).save(path)  # what was read is written again as it was
    assert KeyRegistry.load(path).get("synth-agent") == identity
    assert loaded.by_keyid(new.identity(Role.AGENT).keyid) == identity
    assert loaded.by_keyid(old.identity(Role.AGENT).keyid) is None  # never a key in use
    found = loaded.retired_key(old.identity(Role.AGENT).keyid)
    assert found is not None and found[1].last_entry == 41
    act = make_act(sender="synth-agent")
    with pytest.raises(UnknownKey, match="retired key of 'synth-agent'"):
        verify_envelope(sign_fact(act, old), loaded)  # as a host checks what arrives
    assert verify_envelope(sign_fact(act, new), loaded).fact == act


@pytest.mark.parametrize(
    ("retired", "expected"),
    [
        ("{}", "must be a list"),
        ("[{public_key: KEY}]", "expected a mapping with public_key, last_entry, root"),
        ("[{public_key: KEY, last_entry: -2, REST}]", "-1 (none) or more, an integer"),
        ("[{public_key: KEY, last_entry: true, REST}]", "-1 (none) or more, an integer"),
        ("[{public_key: KEY, last_entry: '3', REST}]", "-1 (none) or more, an integer"),
        ("[{public_key: nope, last_entry: 3, REST}]", "32 raw Ed25519 bytes in base64"),
        (
            "[{public_key: KEY, last_entry: 3, root: AAAA, retired_at_ms: 1}]",
            "the 32 bytes of a Merkle root",
        ),
        ("[{public_key: KEY, last_entry: 3, root: ROOT, retired_at_ms: x}]", "since 1970"),
        ("[{public_key: CURRENT, last_entry: 3, REST}]", "lists one public key twice"),
        ("[{public_key: OTHER, last_entry: 3, REST}]", "share one public key"),
    ],
)
def test_a_retired_key_that_is_not_one_is_refused_naming_the_key(
    tmp_path: Path, retired: str, expected: str
) -> None:
    current, other, old = (SigningKey.generate(n) for n in ("a", "b", "a"))

    def b64(key: SigningKey) -> str:
        return base64.b64encode(key.public_key).decode()

    path = tmp_path / "keys.yaml"
    root = base64.b64encode(b"\x01" * 32).decode()
    retired = (
        retired.replace("REST", "root: ROOT, retired_at_ms: 1")
        .replace("ROOT", root)
        .replace("CURRENT", b64(current))
        .replace("OTHER", b64(other))
    )
    path.write_text(
        "identities:\n"
        f"  a: {{role: agent, public_key: {b64(current)}, channels: [x], "
        f"retired: {retired.replace('KEY', b64(old))}}}\n"
        f"  b: {{role: agent, public_key: {b64(other)}, channels: [x]}}\n"
    )
    with pytest.raises(ConfigError, match=re.escape(expected)) as raised:
        KeyRegistry.load(path)
    assert "identities.a.retired" in str(raised.value) or "one public key" in expected


def test_keys_rotate_changes_nothing_unless_it_can_keep_the_old_key_valid(
    tmp_path: Path,
) -> None:
    _agora(tmp_path, "keys", "new", "host", "--role", "host", "--channel", "*")
    registry, key_file = tmp_path / "keys.yaml", tmp_path / ".agora" / "keys" / "host.key"
    before = (registry.read_bytes(), key_file.read_bytes())

    no_log = _agora(tmp_path, "keys", "rotate", "host")
    assert no_log.returncode == 1
    assert "there is no fact log in facts" in no_log.stderr
    unknown = _agora(tmp_path, "keys", "rotate", "ghost")
    assert unknown.returncode == 1 and "'ghost' is not in the key registry" in unknown.stderr
    host = read_private_key(tmp_path / ".agora" / "keys", "host")
    with FactLog.open(tmp_path / "facts", signer=host):  # a recorder writing it
        busy = _agora(tmp_path, "keys", "rotate", "host")
    assert busy.returncode == 1 and "being written by another process" in busy.stderr
    assert (registry.read_bytes(), key_file.read_bytes()) == before

    done = _agora(tmp_path, "keys", "rotate", "host")
    assert done.returncode == 0, done.stderr
    assert "valid for no entry (the log is empty)" in done.stdout
    rotated = KeyRegistry.load(registry).get("host")
    assert [r.public_key for r in rotated.retired] == [host.public_key]
    assert rotated.retired[0].last_entry == -1  # and for the checkpoint over none
    verified = _agora(tmp_path, "verify", "facts")
    assert verified.returncode == 0, verified.stdout
    listed = _agora(tmp_path, "keys", "list").stdout
    assert "1 retired" in listed
    assert read_private_key(tmp_path / ".agora" / "keys", "host").public_key == rotated.public_key
    # a registry read with a retired key in it is written again: rotate again, add a key
    again = _agora(tmp_path, "keys", "rotate", "host")
    assert again.returncode == 0, again.stderr
    assert _agora(tmp_path, "keys", "new", "carol").returncode == 0
    assert len(KeyRegistry.load(registry).get("host").retired) == 2
    assert _agora(tmp_path, "verify", "facts").returncode == 0
