"""The mailserver admin command."""

from __future__ import annotations

import io
import os
import shutil

from mailserver.accounts import read_passwd, verify_password
from mailserver.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_config(tmp_path) -> str:
    shutil.copy(os.path.join(ROOT, "etc", "mailserver.toml"), tmp_path / "m.toml")
    shutil.copy(os.path.join(ROOT, "etc", "passwd"), tmp_path / "passwd")
    return str(tmp_path / "m.toml")


def test_check_config(tmp_path, capsys) -> None:
    config = make_config(tmp_path)
    assert main(["check-config", config]) == 0
    assert capsys.readouterr().out == f"{config}: OK\n"
    os.unlink(tmp_path / "passwd")
    assert main(["check-config", config]) == 1
    assert "[accounts] passwd_file" in capsys.readouterr().err


def test_user_add_passwd_list(tmp_path, capsys, monkeypatch) -> None:
    config = make_config(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("pw1\n"))
    assert main(["user", "add", "carol@example.test", "--config", config, "--password-stdin"]) == 0
    accounts = read_passwd(str(tmp_path / "passwd"))
    assert verify_password("pw1", accounts["carol@example.test"].password_hash)
    # The copy was 0644: the edit keeps owner and group rights, never world-readable.
    assert oct(os.stat(tmp_path / "passwd").st_mode & 0o777) == "0o640"

    monkeypatch.setattr("sys.stdin", io.StringIO("pw2\n"))
    assert (
        main(["user", "passwd", "carol@example.test", "--config", config, "--password-stdin"]) == 0
    )
    accounts = read_passwd(str(tmp_path / "passwd"))
    assert verify_password("pw2", accounts["carol@example.test"].password_hash)
    assert verify_password("secret", accounts["alice@example.test"].password_hash)

    capsys.readouterr()
    assert main(["user", "list", "--config", config]) == 0
    assert capsys.readouterr().out.split() == [
        "alice@example.test",
        "bob@example.test",
        "carol@example.test",
    ]


def test_user_errors(tmp_path, capsys, monkeypatch) -> None:
    config = make_config(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("x\n"))
    assert main(["user", "add", "alice@example.test", "--config", config, "--password-stdin"]) == 1
    assert (
        main(["user", "add", "dan@elsewhere.example", "--config", config, "--password-stdin"]) == 1
    )
    assert (
        main(["user", "passwd", "nobody@example.test", "--config", config, "--password-stdin"]) == 1
    )
    assert main(["user", "add", "../x@example.test", "--config", config, "--password-stdin"]) == 1
    err = capsys.readouterr().err
    assert "exists already" in err and "not a local domain" in err and "no such user" in err


def test_user_edits_keep_other_lines_and_fields(tmp_path, capsys, monkeypatch) -> None:
    config = make_config(tmp_path)
    passwd = tmp_path / "passwd"
    passwd.write_text(
        "# office users\n"
        "alice@example.test:{PLAIN}old:1000:1000::/home/alice::userdb_quota_rule=*:storage=1G\n"
        "bob@example.test:{PLAIN}bob\n"
    )
    monkeypatch.setattr("sys.stdin", io.StringIO("new\n"))
    args = ["user", "passwd", "ALICE@example.test", "--config", config, "--password-stdin"]
    assert main(args) == 0
    lines = passwd.read_text().splitlines()
    assert lines[0] == "# office users"
    user, hashed, extra = lines[1].split(":", 2)
    assert (user, extra) == (
        "alice@example.test",
        "1000:1000::/home/alice::userdb_quota_rule=*:storage=1G",
    )
    assert verify_password("new", hashed)
    assert lines[2] == "bob@example.test:{PLAIN}bob"
    # No temporary file is left next to it.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".passwd")) == []


def test_concurrent_user_adds_lose_nothing(tmp_path) -> None:
    """Each edit re-reads the file under its lock, so parallel adds all land."""
    import subprocess
    import sys

    config = make_config(tmp_path)
    names = [f"user{i}@example.test" for i in range(6)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mailserver.cli",
                "user",
                "add",
                name,
                "--config",
                config,
                "--password-stdin",
            ],
            stdin=subprocess.PIPE,
            cwd=ROOT,
        )
        for name in names
    ]
    for proc in procs:
        proc.communicate(b"pw\n", timeout=60)
        assert proc.returncode == 0
    accounts = read_passwd(str(tmp_path / "passwd"))
    assert set(names) <= set(accounts)
