"""The queue's settings from the configuration: the smarthost's credentials (a password
file only the service may read) and the CA file; one clear line when they are wrong."""

from __future__ import annotations

import os
from typing import Any

import pytest

from mailserver.cli import main
from mailserver.config import ConfigError, load
from mailserver.queue.service import check_queue_files, relay_credentials, transport_settings
from mailserver.smtp.client import TLSPolicy
from tests.e2e.harness import write_config


def config_with(tmp_path: Any, queue: str) -> str:
    return write_config(str(tmp_path), extra="[queue]\n" + queue)


def test_smarthost_with_the_password_in_the_config(tmp_path: Any) -> None:
    path = config_with(
        tmp_path,
        'relay_host = "smtp.example.net:587"\nrelay_username = "me@example.net"\n'
        'relay_password = "app password"\n',
    )
    settings = transport_settings(load(path))
    assert (settings.relay_host, settings.relay_port) == ("smtp.example.net", 587)
    assert settings.credentials == ("me@example.net", "app password")


def test_password_file_readable_by_the_owner_only(tmp_path: Any, capsys: Any) -> None:
    secret = tmp_path / "relay.secret"
    secret.write_text("s3cret app password\nignored second line\n")
    path = config_with(
        tmp_path,
        'relay_host = "smtp.example.net:587"\nrelay_username = "me@example.net"\n'
        'relay_password_file = "relay.secret"\n',
    )
    for mode in (0o644, 0o640, 0o604, 0o660):
        os.chmod(secret, mode)
        with pytest.raises(ConfigError, match=r"relay_password_file: .* \(chmod 600\)"):
            relay_credentials(load(path))
        assert main(["check-config", path]) == 1
        assert "[queue] relay_password_file" in capsys.readouterr().err
    os.chmod(secret, 0o600)
    assert relay_credentials(load(path)) == ("me@example.net", "s3cret app password")
    os.chmod(secret, 0o400)
    assert relay_credentials(load(path)) == ("me@example.net", "s3cret app password")
    check_queue_files(load(path))
    os.unlink(secret)
    with pytest.raises(ConfigError, match=r"relay_password_file: cannot read .*relay\.secret"):
        relay_credentials(load(path))


def test_ca_file_errors_name_the_key(tmp_path: Any) -> None:
    ca = tmp_path / "ca.pem"
    path = config_with(tmp_path, 'tls_ca_file = "ca.pem"\nmx_tls = "verify"\n')
    with pytest.raises(ConfigError, match=r"\[queue\] tls_ca_file: cannot read"):
        check_queue_files(load(path))
    ca.write_text("")
    with pytest.raises(ConfigError, match=r"\[queue\] tls_ca_file: no certificate"):
        check_queue_files(load(path))
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match=r"\[queue\] tls_ca_file: .* not PEM"):
        check_queue_files(load(path))


def test_mx_tls_settings(tmp_path: Any) -> None:
    expected = {
        "opportunistic": (TLSPolicy.OPPORTUNISTIC, False),
        "verify": (TLSPolicy.REQUIRED, True),
        "never": (TLSPolicy.NEVER, False),
    }
    for value, (policy, verify) in expected.items():
        settings = transport_settings(load(config_with(tmp_path, f'mx_tls = "{value}"\n')))
        assert (settings.mx_tls, settings.verify_mx) == (policy, verify)


def test_relay_tls_mode(tmp_path: Any) -> None:
    def settings(queue: str) -> Any:
        return transport_settings(load(config_with(tmp_path, queue)))

    assert not settings('relay_host = "smtp.example.net:587"\n').relay_implicit_tls
    assert settings('relay_host = "smtp.example.net:465"\n').relay_implicit_tls
    assert not settings(
        'relay_host = "smtp.example.net:465"\nrelay_tls = "starttls"\n'
    ).relay_implicit_tls
    assert settings('relay_host = "[192.0.2.1]:2465"\nrelay_tls = "implicit"\n').relay_implicit_tls
    with pytest.raises(ConfigError, match=r"\[queue\] relay_tls: expected starttls or implicit"):
        load(config_with(tmp_path, 'relay_tls = "ssl"\n'))
