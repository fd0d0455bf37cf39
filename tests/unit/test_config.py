"""Configuration errors stop start-up with one line naming the file and the key."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mailserver.config import ConfigError, load
from mailserver.service import prepare_run_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT = os.path.join(ROOT, "etc", "mailserver.toml")
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def write(tmp_path, text: str) -> str:
    path = tmp_path / "m.toml"
    path.write_text(text)
    return str(path)


def test_embedded_default_loads() -> None:
    config = load(DEFAULT)
    assert config.domains.local == ("example.test",)
    assert config.listeners.smtp == ("tcp:2525:interface=127.0.0.1",)
    assert config.resolve(config.accounts.passwd_file) == os.path.join(ROOT, "etc", "passwd")
    assert config.accounts.aliases["postmaster@example.test"] == ("alice@example.test",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nhostnam = 'x'\n", "[server] hostnam: unknown key"),
        ("[nope]\n", "[nope]: unknown section"),
        ("[smtp]\nmax_recipients = 'many'\n", "[smtp] max_recipients: expected an integer"),
        ("[smtp]\nmax_recipients = 0\n", "[smtp] max_recipients: must be greater than 0"),
        ("[smtp]\nidle_timeout = true\n", "[smtp] idle_timeout: expected a number"),
        ("[listeners]\nsmtp = [1]\n", "[listeners] smtp: expected a string"),
        ("[domains]\nlocal = ['bad_domain!']\n", "[domains] local: domain not allowed"),
        ("[domains]\nlocal = ['bü--x.example']\n", "[domains] local: bad internationalized"),
        (
            "[accounts.aliases]\n'a@bü--x.example' = ['b@example.test']\n",
            "[accounts] aliases: bad internationalized domain",
        ),
        ("[listeners]\n", "[listeners]: no listener configured"),
        ("[listeners]\nsmtp = ['foo:25']\n", "[listeners] smtp: 'foo:25': Unknown endpoint type"),
        ("[listeners]\nimap = ['tcp:abc']\n", "[listeners] imap: 'tcp:abc': invalid literal"),
        ("[listeners]\npop3 = ['tcp:1:bogus=1']\n", "[listeners] pop3: 'tcp:1:bogus=1': "),
        ("server = 1\n", "server: must be a table"),
        ("[imap]\nmax_sessions_per_user = 0\n", "[imap] max_sessions_per_user: must be greater"),
        ("[imap]\nmax_sessions_per_user = 1.5\n", "[imap] max_sessions_per_user: expected an"),
        ("[imap]\nmax_literal = 0\n", "[imap] max_literal: must be greater than 0"),
        ("[imap]\nmax_line = 1000\n", "[imap] max_line: must be at least 8192 (RFC 7162)"),
        ("[imap]\nidle_timeout = 600\n", "[imap] idle_timeout: must be at least 1800 seconds"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_errors_name_file_and_key(tmp_path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load(path)
    assert str(e.value).startswith(path + ": ")
    assert message in str(e.value)


def test_a_u_label_local_domain_is_kept_as_its_a_label(tmp_path) -> None:
    """RFC 5890: bücher.example and xn--bcher-kva.example are one domain; addresses
    (SMTPUTF8 paths, aliases, accounts) are compared in A-labels, so the list is too."""
    path = write(
        tmp_path,
        "[listeners]\nsmtp = ['tcp:0:interface=127.0.0.1']\n"
        "[domains]\nlocal = ['Bücher.example', 'example.test']\n",
    )
    assert load(path).domains.local == ("xn--bcher-kva.example", "example.test")


def test_imap_limits_are_configurable(tmp_path) -> None:
    path = write(
        tmp_path,
        "[listeners]\nimap = ['tcp:0:interface=127.0.0.1']\n"
        "[imap]\nmax_sessions_per_user = 3\nmax_line = 16384\nmax_literal = 1048576\n",
    )
    imap = load(path).imap
    assert (imap.max_sessions_per_user, imap.max_line, imap.max_literal) == (3, 16384, 1048576)
    assert imap.idle_timeout == 1800.0
    assert load(DEFAULT).imap.max_sessions_per_user == 20


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"/nonexistent\.toml: file not found"):
        load("/nonexistent.toml")


def test_twistd_refuses_a_bad_file_with_one_clear_line(tmp_path) -> None:
    path = write(tmp_path, "[smtp]\nmax_recipients = 'many'\n")
    result = subprocess.run(
        [TWISTD, "-n", "mailserver", "--config", path],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode != 0
    # One line, not twistd's usage text: the file, the key, the problem.
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"mailserver: {path}: [smtp] max_recipients: expected an integer, got 'many'"
    ]


def test_twistd_refuses_a_missing_file_with_one_line(tmp_path) -> None:
    path = str(tmp_path / "absent.toml")
    result = subprocess.run(
        [TWISTD, "-n", "mailserver", "--config", path],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert (result.stdout, result.stderr) == ("", f"mailserver: {path}: file not found\n")


def test_systemd_endpoints_are_left_to_start_up(tmp_path) -> None:
    config = load(write(tmp_path, "[listeners]\nsmtp = ['systemd:domain=INET:index=0']\n"))
    assert config.listeners.smtp == ("systemd:domain=INET:index=0",)


def test_twistd_refuses_an_unusable_run_dir_with_one_line(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    (tmp_path / "passwd").write_text("")
    path = write(
        tmp_path,
        f'[server]\nrun_dir = "{blocker}/run"\n[accounts]\npasswd_file = "passwd"\n'
        '[listeners]\nsmtp = ["tcp:0:interface=127.0.0.1"]\n',
    )
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "mailserver", "--config", path],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert (
        result.stderr == f"mailserver: {path}: [server] run_dir: {blocker}/run: Not a directory\n"
    )


def test_a_missing_sample_store_is_refused_naming_the_key(tmp_path) -> None:
    path = write(
        tmp_path,
        '[store]\nmaildir = "run/Maildir"\nsample = "no-such-sample"\n'
        '[listeners]\nsmtp = ["tcp:0:interface=127.0.0.1"]\n',
    )
    with pytest.raises(ConfigError) as refused:
        prepare_run_dir(load(path))
    sample = tmp_path / "no-such-sample"
    assert str(refused.value) == f"{path}: [store] sample: {sample}: no such directory"
    assert not (tmp_path / "run" / "Maildir").exists()  # no empty store instead


def test_twistd_lists_the_plugin_and_its_options() -> None:
    listing = subprocess.run(
        [TWISTD, "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert listing.returncode == 0
    assert any(line.split()[:1] == ["mailserver"] for line in listing.stdout.splitlines())
    options = subprocess.run(
        [TWISTD, "mailserver", "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert options.returncode == 0
    assert "--config=" in options.stdout and "--trace" in options.stdout
