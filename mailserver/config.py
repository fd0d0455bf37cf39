"""The configuration: one TOML file read into frozen dataclasses.

Every section and key is declared here with its type and default; an unknown key, a
wrong type or an unreadable file raises :class:`ConfigError` whose message names the file
and the key, so start-up stops with one clear line. Relative paths are taken relative to
the directory of the configuration file.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from typing import Any

from mailserver.names import BadName, check_domain, normalize_address


class ConfigError(Exception):
    """A configuration problem, phrased as ``FILE: [section] key: problem``."""


@dataclass(frozen=True)
class ServerConfig:
    hostname: str = "localhost"
    run_dir: str = "run"


@dataclass(frozen=True)
class DomainsConfig:
    local: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoreConfig:
    maildir: str = "run/Maildir"
    # A sample store copied into ``maildir`` on first start (when it does not exist yet).
    sample: str = ""
    # Per-user INBOX quota in bytes; 0 means none.
    quota_bytes: int = 0


@dataclass(frozen=True)
class AccountsConfig:
    passwd_file: str = "passwd"
    # RFC 5233 subaddress separator: user+tag@domain is delivered to user@domain.
    subaddress_separator: str = "+"
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ListenersConfig:
    """Twisted endpoint strings (``tcp:2525:interface=127.0.0.1``), a list per service."""

    smtp: tuple[str, ...] = ()
    imap: tuple[str, ...] = ()
    pop3: tuple[str, ...] = ()


@dataclass(frozen=True)
class SMTPConfig:
    # RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with CRLF.
    max_command_line: int = 512
    # RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets with CRLF.
    max_text_line: int = 1000
    max_message_size: int = 32 * 1024 * 1024
    # RFC 5321 §4.5.3.1.8: at least 100 recipients must be accepted.
    max_recipients: int = 100
    max_errors: int = 10
    # RFC 5321 §4.5.3.2.7: the server timeout should be at least 5 minutes.
    idle_timeout: float = 300.0


@dataclass(frozen=True)
class IMAPConfig:
    max_line: int = 8192
    max_literal: int = 64 * 1024 * 1024
    # RFC 3501 §5.4: an autologout timer must be at least 30 minutes.
    idle_timeout: float = 1800.0
    max_errors: int = 20


@dataclass(frozen=True)
class POP3Config:
    max_line: int = 512
    # RFC 1939 §3: the autologout timer must be at least 10 minutes.
    idle_timeout: float = 600.0
    max_errors: int = 10


@dataclass(frozen=True)
class Config:
    path: str
    server: ServerConfig = field(default_factory=ServerConfig)
    domains: DomainsConfig = field(default_factory=DomainsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    accounts: AccountsConfig = field(default_factory=AccountsConfig)
    listeners: ListenersConfig = field(default_factory=ListenersConfig)
    smtp: SMTPConfig = field(default_factory=SMTPConfig)
    imap: IMAPConfig = field(default_factory=IMAPConfig)
    pop3: POP3Config = field(default_factory=POP3Config)

    def resolve(self, path: str) -> str:
        """A path from the file, relative to the file's directory."""
        if not path:
            return path
        return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(self.path)), path))


SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "domains": DomainsConfig,
    "store": StoreConfig,
    "accounts": AccountsConfig,
    "listeners": ListenersConfig,
    "smtp": SMTPConfig,
    "imap": IMAPConfig,
    "pop3": POP3Config,
}

# Keys whose value must be positive.
_POSITIVE = {
    "max_command_line",
    "max_text_line",
    "max_message_size",
    "max_recipients",
    "max_errors",
    "idle_timeout",
    "max_line",
    "max_literal",
}


def load(path: str) -> Config:
    """Read and check a configuration file."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    sections: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"{path}: [{name}]: unknown section")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {name}: must be a table [{name}]")
        sections[name] = _build(path, name, SECTIONS[name], value)
    config = Config(path=path, **sections)
    _check(config)
    return config


def _build(path: str, section: str, cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{path}: [{section}] {key}: unknown key")
        try:
            kwargs[key] = _coerce(hints[key], value)
        except TypeError as e:
            raise ConfigError(f"{path}: [{section}] {key}: {e}") from None
        if key in _POSITIVE and kwargs[key] <= 0:
            raise ConfigError(f"{path}: [{section}] {key}: must be greater than 0")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {value!r}")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_coerce(item, v) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"expected a table, got {value!r}")
        _, item = typing.get_args(hint)
        return {str(k): _coerce(item, v) for k, v in value.items()}
    raise TypeError(f"unsupported type {hint!r}")


def _check(config: Config) -> None:
    path = config.path
    for domain in config.domains.local:
        try:
            check_domain(domain)
        except BadName as e:
            raise ConfigError(f"{path}: [domains] local: {e}") from None
    for alias, targets in config.accounts.aliases.items():
        try:
            normalize_address(alias)
            for target in targets:
                normalize_address(target)
        except BadName as e:
            raise ConfigError(f"{path}: [accounts] aliases: {e}") from None
    if not any((config.listeners.smtp, config.listeners.imap, config.listeners.pop3)):
        raise ConfigError(f"{path}: [listeners]: no listener configured")
