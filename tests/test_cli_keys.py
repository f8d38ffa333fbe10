"""spinectl keys generate / sign / verify, cross-checked with the stock minisign tool."""

from __future__ import annotations

import json
import os
import pty
import select
import stat
import sys
import time

import pytest

from bay0.formats.minisign import PublicKey, SecretKeyFile
from pipeline.paths import PROJECT_ROOT
from pipeline.run import run
from spinectl import keys
from tests.conftest import require_tool

PASS = "an operator passphrase"


@pytest.fixture(autouse=True)
def _minisign(monkeypatch):
    require_tool("minisign")
    # Another test can leak SPINE_DEBUG=1 (spinectl --debug sets it); we assert on
    # the tracebackless one-line errors.
    monkeypatch.delenv("SPINE_DEBUG", raising=False)


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("SPINE_KEY_PASSPHRASE", PASS)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    return monkeypatch


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "pod.img"
    path.write_bytes(b"\x00squashfs and a verity tree\n" * 1000)
    return path


def generate(spinectl, tmp_path, name="ops", *extra, encrypted=False):
    """A key pair via the CLI; unencrypted unless the test is about encryption (scrypt ~0.4 s)."""
    flags = [] if encrypted else ["--no-passphrase"]
    result = spinectl(
        "keys", "generate", "--name", name, "--dir", tmp_path / "keys", "--json", *flags, *extra
    )
    assert result.code == 0, result.err
    return json.loads(result.out)


def minisign_verify(path, pub, sig=None):
    argv = ["minisign", "-Vm", path, "-p", pub] + (["-x", sig] if sig else [])
    return run(argv, check=False)


# ------------------------------------------------------------------ keys generate


def test_generate_encrypted_key_pair(spinectl, env, tmp_path):
    result = spinectl("keys", "generate", "--name", "ops", "--dir", tmp_path / "keys")
    assert result.code == 0, result.err
    key_id = result.out.split()[0]
    pub, key = tmp_path / "keys/ops.pub", tmp_path / "keys/ops.key"
    assert PublicKey.parse(pub.read_text()).key_id_hex == key_id
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert SecretKeyFile.parse(key.read_text()).encrypted
    assert keys.load_secret_key(key).public_key == PublicKey.parse(pub.read_text())


def test_generate_never_overwrites(spinectl, env, tmp_path):
    first = generate(spinectl, tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "keys").iterdir()}
    (tmp_path / "keys/ops.pub").unlink()  # even half a pair is never replaced
    result = spinectl("keys", "generate", "--name", "ops", "--dir", tmp_path / "keys")
    assert result.code == 5 and "ops.key already exists" in result.err
    assert (tmp_path / "keys/ops.key").read_bytes() == before["ops.key"]
    assert not (tmp_path / "keys/ops.pub").exists()
    assert first["key_id"]


def test_generate_unencrypted_only_with_the_flag(spinectl, monkeypatch, tmp_path):
    monkeypatch.delenv("SPINE_KEY_PASSPHRASE", raising=False)
    result = spinectl("keys", "generate", "--name", "ops", "--dir", tmp_path / "keys")
    assert result.code == 2 and "SPINE_KEY_PASSPHRASE" in result.err
    assert not (tmp_path / "keys").exists()
    made = generate(spinectl, tmp_path)
    assert made["encrypted"] is False
    assert not SecretKeyFile.parse((tmp_path / "keys/ops.key").read_text()).encrypted
    monkeypatch.setenv("SPINE_KEY_PASSPHRASE", "")
    result = spinectl("keys", "generate", "--name", "other", "--dir", tmp_path / "keys")
    assert result.code == 2 and "empty passphrase" in result.err


@pytest.mark.parametrize("where", ["keys", "tests/nested"])
def test_generate_refuses_the_repository_tree(spinectl, env, where):
    target = PROJECT_ROOT / where
    result = spinectl("keys", "generate", "--name", "leak-test", "--dir", target)
    assert result.code == 2 and "inside the repository" in result.err and "hint:" in result.err
    assert not (target / "leak-test.key").exists() and not (target / "leak-test.pub").exists()


def test_generate_refuses_a_bad_name_or_directory(spinectl, env, tmp_path):
    result = spinectl("keys", "generate", "--name", "../x", "--dir", tmp_path)
    assert result.code == 2 and "invalid key name" in result.err
    (tmp_path / "file").write_text("")
    result = spinectl(
        "keys", "generate", "--name", "x", "--dir", tmp_path / "file", "--no-passphrase"
    )
    assert result.code == 2 and "cannot write in" in result.err


def converse(args, answers, timeout=60):
    """Run spinectl on a pseudo-terminal, answering each prompt; returns (code, output)."""
    env = {k: v for k, v in os.environ.items() if k != "SPINE_KEY_PASSPHRASE"}
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal, so getpass reads from it
        os.execve(sys.executable, [sys.executable, "-m", "spinectl", *map(str, args)], env)
    out, pending, deadline = b"", list(answers), time.monotonic() + timeout
    while select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        out += chunk
        if pending and pending[0][0] in out.split(b"\n")[-1]:
            os.write(fd, pending.pop(0)[1])
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_passphrase_prompts_on_a_terminal(tmp_path, data):
    code, out = converse(
        ["keys", "generate", "--name", "tty", "--dir", tmp_path / "keys"],
        [
            (b"Passphrase", b"one\n"),
            (b"Repeat", b"two\n"),
            (b"Passphrase", b"pw\n"),
            (b"Repeat", b"pw\n"),
        ],
    )
    assert code == 0, out
    assert out.count("Passphrase for new key tty") == 2 and "do not match" in out
    assert SecretKeyFile.parse((tmp_path / "keys/tty.key").read_text()).encrypted
    code, out = converse(
        ["sign", data, "--key", tmp_path / "keys/tty.key"], [(b"Passphrase for", b"pw\n")]
    )
    assert code == 0, out
    assert minisign_verify(data, tmp_path / "keys/tty.pub").returncode == 0


# ------------------------------------------------------------------ sign


@pytest.mark.parametrize("encrypted", [True, False])
def test_minisign_accepts_our_signature(spinectl, env, tmp_path, data, encrypted):
    made = generate(spinectl, tmp_path, encrypted=encrypted)
    result = spinectl("sign", data, "--key", made["secret_key"])
    assert result.code == 0, result.err
    out = minisign_verify(data, made["public_key"])
    assert out.returncode == 0, out.stderr
    comment = f"timestamp:1700000000\tfile:pod.img\tsize:28000\tkey:{made['key_id']}"
    assert f"Trusted comment: {comment}".encode() in out.stdout
    verify = spinectl("verify", data, "--pubkey", made["public_key"], "--json")
    assert verify.code == 0, verify.err
    assert json.loads(verify.out)["fields"]["size"] == "28000"


def test_signature_not_overwritten_without_force(spinectl, env, tmp_path, data):
    made = generate(spinectl, tmp_path)
    assert spinectl("sign", data, "--key", made["secret_key"]).code == 0
    sig = tmp_path / "pod.img.minisig"
    before = sig.read_bytes()
    env.setenv("SOURCE_DATE_EPOCH", "1700000999")
    result = spinectl("sign", data, "--key", made["secret_key"])
    assert result.code == 5 and "already exists" in result.err and "--force" in result.err
    assert sig.read_bytes() == before
    assert spinectl("sign", data, "--key", made["secret_key"], "--force").code == 0
    assert b"timestamp:1700000999" in sig.read_bytes()


def test_wrong_passphrase_is_precise_and_writes_nothing(spinectl, env, tmp_path, data):
    made = generate(spinectl, tmp_path, encrypted=True)
    env.setenv("SPINE_KEY_PASSPHRASE", "not it")
    result = spinectl("sign", data, "--key", made["secret_key"])
    assert result.code == 4 and f"wrong passphrase for {made['secret_key']}" in result.err
    assert not (tmp_path / "pod.img.minisig").exists()


def test_sign_errors(spinectl, env, tmp_path, data):
    made = generate(spinectl, tmp_path)
    missing = spinectl("sign", tmp_path / "nope", "--key", made["secret_key"])
    assert missing.code == 6 and "does not exist" in missing.err
    not_a_key = spinectl("sign", data, "--key", made["public_key"])
    assert not_a_key.code == 3 and "ops.pub" in not_a_key.err
    assert "Traceback" not in missing.err + not_a_key.err


def test_our_encrypted_key_works_in_minisign(spinectl, env, tmp_path, data):
    made = generate(spinectl, tmp_path, encrypted=True)
    sig = tmp_path / "by-minisign.minisig"
    run(
        ["minisign", "-S", "-s", made["secret_key"], "-m", data, "-x", sig],
        input=f"{PASS}\n".encode(),
    )
    result = spinectl("verify", data, "--pubkey", made["public_key"], "--signature", sig)
    assert result.code == 0, result.err


# ------------------------------------------------------------------ verify


@pytest.fixture
def minisign_key(tmp_path):
    """A key pair made by ``minisign -G -W`` (no password)."""
    pub, key = tmp_path / "m.pub", tmp_path / "m.key"
    run(["minisign", "-G", "-W", "-p", pub, "-s", key])
    return pub, key


@pytest.mark.parametrize("legacy", [[], ["-l"]])
def test_we_accept_minisign_signatures(spinectl, tmp_path, data, minisign_key, legacy):
    pub, key = minisign_key
    run(["minisign", "-S", *legacy, "-s", key, "-m", data])
    result = spinectl("verify", data, "--pubkey", pub, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["key_id"] == PublicKey.parse(pub.read_text()).key_id_hex
    assert report["algorithm"] == ("Ed" if legacy else "ED")
    assert report["fields"]["file"] == "pod.img"


def test_tampering_gives_distinct_messages(spinectl, env, tmp_path, data):
    made = generate(spinectl, tmp_path)
    other = generate(spinectl, tmp_path, "other")
    assert spinectl("sign", data, "--key", made["secret_key"]).code == 0
    sig = tmp_path / "pod.img.minisig"
    good_sig, good_data = sig.read_bytes(), data.read_bytes()

    data.write_bytes(good_data.replace(b"verity", b"VERITY", 1))
    changed_file = spinectl("verify", data, "--pubkey", made["public_key"])
    data.write_bytes(good_data)

    sig.write_bytes(good_sig.replace(b"size:28000", b"size:28001"))
    changed_comment = spinectl("verify", data, "--pubkey", made["public_key"])
    sig.write_bytes(good_sig)

    wrong_key = spinectl("verify", data, "--pubkey", other["public_key"])

    assert "signature does not match the data" in changed_file.err
    assert "trusted comment was altered" in changed_comment.err
    assert "not trusted" in wrong_key.err and other["key_id"] in wrong_key.err
    results = (changed_file, changed_comment, wrong_key)
    assert [r.code for r in results] == [4, 4, 4]
    assert len({r.err for r in results}) == 3
    assert all(r.err.count("\n") == 1 and "hint:" in r.err for r in results)
    assert minisign_verify(data, made["public_key"]).returncode == 0  # restored: all was tamper


def test_verify_failure_as_a_real_process(spinectl, spinectl_proc, tmp_path, data):
    made = generate(spinectl, tmp_path)
    other = generate(spinectl, tmp_path, "other")
    assert spinectl("sign", data, "--key", made["secret_key"]).code == 0
    proc = spinectl_proc("verify", str(data), "--pubkey", other["public_key"])
    assert proc.returncode == 4
    assert proc.stderr.decode().startswith("spinectl: error: signed by key ")
    assert proc.stderr.count(b"\n") == 1 and proc.stdout == b""


def test_verify_with_a_directory_of_trusted_keys(spinectl, env, tmp_path, data):
    made = generate(spinectl, tmp_path)
    generate(spinectl, tmp_path, "other")
    assert spinectl("sign", data, "--key", made["secret_key"]).code == 0
    result = spinectl("verify", data, "--pubkey", tmp_path / "keys")
    assert result.code == 0 and made["key_id"] in result.out
    empty = tmp_path / "empty"
    empty.mkdir()
    result = spinectl("verify", data, "--pubkey", empty)
    assert result.code == 6 and "no trusted keys" in result.err


def test_verify_missing_or_garbled_signature(spinectl, env, tmp_path, data):
    made = generate(spinectl, tmp_path)
    result = spinectl("verify", data, "--pubkey", made["public_key"])
    assert result.code == 6 and "pod.img.minisig does not exist" in result.err
    (tmp_path / "pod.img.minisig").write_text("hello\n")
    result = spinectl("verify", data, "--pubkey", made["public_key"])
    assert result.code == 3 and "pod.img.minisig" in result.err


def test_verify_checks_the_signed_size(spinectl, tmp_path, data, minisign_key):
    pub, key = minisign_key
    run(["minisign", "-S", "-s", key, "-m", data, "-t", "file:pod.img\tsize:5"])
    assert minisign_verify(data, pub).returncode == 0  # minisign does not read the comment
    result = spinectl("verify", data, "--pubkey", pub)
    assert result.code == 4 and "vouches for 5" in result.err


# ------------------------------------------------------------------ password-protected minisign keys


@pytest.fixture(scope="module")
def minisign_encrypted_key(tmp_path_factory):
    """minisign's own encrypted key (scrypt N=2^20, 1 GiB: several seconds each way)."""
    require_tool("minisign")
    d = tmp_path_factory.mktemp("mkey")
    run(
        ["minisign", "-G", "-p", d / "m.pub", "-s", d / "m.key"], input=f"{PASS}\n{PASS}\n".encode()
    )
    return d / "m.pub", d / "m.key"


@pytest.mark.slow
def test_minisign_encrypted_key_signature_verifies(
    spinectl, tmp_path, data, minisign_encrypted_key
):
    pub, key = minisign_encrypted_key
    run(["minisign", "-S", "-s", key, "-m", data], input=f"{PASS}\n".encode())
    assert spinectl("verify", data, "--pubkey", pub).code == 0


@pytest.mark.slow
def test_minisign_encrypted_key_loads_in_spinectl(
    spinectl, env, tmp_path, data, minisign_encrypted_key
):
    pub, key = minisign_encrypted_key
    result = spinectl("sign", data, "--key", key)
    assert result.code == 0, result.err
    assert minisign_verify(data, pub).returncode == 0
