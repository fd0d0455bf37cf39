"""The configuration: one TOML file read into frozen dataclasses.

Every section and key is declared here with its type and default; an unknown key, a
wrong type or an unreadable file raises :class:`ConfigError` whose message names the file
and the key, so start-up stops with one clear line. Relative paths are taken relative to
the directory of the configuration file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import typing
from dataclasses import dataclass, field
from typing import Any

from mailserver.names import BadName, a_label, check_domain, normalize_address


class ConfigError(Exception):
    """A configuration problem, phrased as ``FILE: [section] key: problem``."""


@dataclass(frozen=True)
class ServerConfig:
    hostname: str = "localhost"
    run_dir: str = "run"
    # The protocol trace (mailserver/trace.py): every line, masked, to the log and to
    # <run_dir>/trace.jsonl; messages as "summary" (size, first lines) or "full".
    trace: bool = False
    trace_bodies: str = "summary"


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

    smtp: tuple[str, ...] = ()  # MTA, port 25: STARTTLS offered, never AUTH
    submission: tuple[str, ...] = ()  # MSA, port 587: STARTTLS (RFC 6409)
    submissions: tuple[str, ...] = ()  # MSA, port 465: implicit TLS (RFC 8314)
    imap: tuple[str, ...] = ()  # 143: STARTTLS
    imaps: tuple[str, ...] = ()  # 993: implicit TLS
    pop3: tuple[str, ...] = ()  # 110: STLS
    pop3s: tuple[str, ...] = ()  # 995: implicit TLS


@dataclass(frozen=True)
class TLSConfig:
    """The server certificate (PEM, the file may hold the chain) and its key; both empty
    means a development certificate made in the run directory on first start."""

    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True)
class AuthConfig:
    # Plaintext logins before TLS are refused (RFC 8314), except from loopback clients
    # when this is true (the development default).
    allow_plaintext_on_loopback: bool = False
    # Failed logins from one client address (for IPv6, its /64): each failure delays
    # the answer by delay_step more seconds (at most max_delay); past max_failures
    # within failure_window seconds the address is refused for lockout seconds.
    delay_step: float = 1.0
    max_delay: float = 10.0
    max_failures: int = 10
    failure_window: float = 600.0
    lockout: float = 900.0


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
    max_connections: int = 1000
    max_connections_per_client: int = 20


@dataclass(frozen=True)
class IMAPConfig:
    # RFC 7162 §4: a command line (literals aside) of at least 8192 octets is accepted.
    max_line: int = 8192
    # The octets of one command's literals (an APPEND's message); RFC 7888 §4: a bigger
    # {n} gets NO before the client sends it, a bigger {n+} closes with BYE.
    max_literal: int = 64 * 1024 * 1024
    # RFC 3501 §5.4: an autologout timer must be at least 30 minutes.
    idle_timeout: float = 1800.0
    max_errors: int = 20
    max_connections: int = 1000
    max_connections_per_client: int = 20
    # Logged-in sessions of one user at once, over all IMAP listeners (NO [LIMIT] beyond).
    max_sessions_per_user: int = 20


@dataclass(frozen=True)
class POP3Config:
    max_line: int = 512
    # RFC 1939 §3: the autologout timer must be at least 10 minutes.
    idle_timeout: float = 600.0
    max_errors: int = 10
    max_connections: int = 1000
    max_connections_per_client: int = 20


@dataclass(frozen=True)
class QueueConfig:
    """The outbound queue (mailserver/queue): mail for other domains waits and leaves here."""

    # The spool directory; empty means "queue" inside [server] run_dir.
    spool_dir: str = ""
    # A smarthost "host:port" that takes all outbound mail, with STARTTLS and a verified
    # certificate required; empty means delivery to the MX hosts of each domain.
    relay_host: str = ""
    # "starttls" (RFC 3207, port 587) or "implicit" (RFC 8314 §3.3, TLS from the first
    # byte, port 465); empty: implicit on port 465, STARTTLS on any other port.
    relay_tls: str = ""
    relay_username: str = ""
    relay_password: str = ""
    # Or the password in a file (first line) that only the service may read (mode 0600).
    relay_password_file: str = ""
    # CA certificates (PEM) to verify TLS peers with; empty means the system's trust store.
    tls_ca_file: str = ""
    # STARTTLS towards MX hosts: "opportunistic" (RFC 3207, unverified), "verify"
    # (required, certificate checked against the MX name) or "never".
    mx_tls: str = "opportunistic"
    # RFC 5321 §4.5.4: port 25; another port is for tests only.
    mx_port: int = 25
    # DNS servers ("192.0.2.53", "127.0.0.1:5353", "[::1]:53"); empty: /etc/resolv.conf.
    nameservers: tuple[str, ...] = ()
    dns_timeout: float = 10.0
    # Retries as Postfix does them: the first after min_backoff seconds, then doubling
    # up to max_backoff; RFC 5321 §4.5.4.1: give up after 4-5 days.
    min_backoff: float = 300.0
    max_backoff: float = 4000.0
    max_lifetime: float = 5 * 86400.0
    # A delay notice (RFC 3464 Action: delayed) after this many seconds; 0: never.
    delay_warning: float = 4 * 3600.0
    # How often the spool is scanned for requests from `mailserver queue` (which also
    # wakes the server with SIGUSR2, so this is the fallback).
    scan_interval: float = 60.0
    # Concurrent SMTP connections, in all and per destination domain.
    max_deliveries: int = 20
    max_deliveries_per_domain: int = 4
    # RFC 5321 §4.5.3.2 client timeouts, in seconds.
    connect_timeout: float = 30.0
    greeting_timeout: float = 300.0
    command_timeout: float = 300.0
    data_init_timeout: float = 120.0
    data_end_timeout: float = 600.0


@dataclass(frozen=True)
class Config:
    path: str
    server: ServerConfig = field(default_factory=ServerConfig)
    domains: DomainsConfig = field(default_factory=DomainsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    accounts: AccountsConfig = field(default_factory=AccountsConfig)
    listeners: ListenersConfig = field(default_factory=ListenersConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    smtp: SMTPConfig = field(default_factory=SMTPConfig)
    imap: IMAPConfig = field(default_factory=IMAPConfig)
    pop3: POP3Config = field(default_factory=POP3Config)
    queue: QueueConfig = field(default_factory=QueueConfig)

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
    "tls": TLSConfig,
    "auth": AuthConfig,
    "smtp": SMTPConfig,
    "imap": IMAPConfig,
    "pop3": POP3Config,
    "queue": QueueConfig,
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
    "max_connections",
    "max_connections_per_client",
    "max_sessions_per_user",
    "max_failures",
    "failure_window",
    "mx_port",
    "dns_timeout",
    "min_backoff",
    "max_backoff",
    "max_lifetime",
    "scan_interval",
    "max_deliveries",
    "max_deliveries_per_domain",
    "connect_timeout",
    "greeting_timeout",
    "command_timeout",
    "data_init_timeout",
    "data_end_timeout",
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
    # Local domains as their A-labels, the spelling addresses are compared in.
    local = tuple(a_label(d) for d in config.domains.local)
    return dataclasses.replace(config, domains=dataclasses.replace(config.domains, local=local))


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
    _check_imap(path, config.imap)
    for domain in config.domains.local:
        try:
            check_domain(a_label(domain))
        except BadName as e:
            raise ConfigError(f"{path}: [domains] local: {e}") from None
    for alias, targets in config.accounts.aliases.items():
        try:
            normalize_address(alias)
            for target in targets:
                normalize_address(target)
        except BadName as e:
            raise ConfigError(f"{path}: [accounts] aliases: {e}") from None
    if not any(getattr(config.listeners, f.name) for f in dataclasses.fields(ListenersConfig)):
        raise ConfigError(f"{path}: [listeners]: no listener configured")
    for kind in dataclasses.fields(ListenersConfig):
        for description in getattr(config.listeners, kind.name):
            problem = endpoint_problem(description)
            if problem is not None:
                raise ConfigError(f"{path}: [listeners] {kind.name}: {description!r}: {problem}")
    if config.server.trace_bodies not in ("summary", "full"):
        raise ConfigError(
            f"{path}: [server] trace_bodies: expected summary or full, "
            f"got {config.server.trace_bodies!r}"
        )
    if bool(config.tls.cert_file) != bool(config.tls.key_file):
        raise ConfigError(f"{path}: [tls]: cert_file and key_file go together")
    _check_queue(path, config.queue)


# RFC 7162 §4 and RFC 3501 §5.4: the least an IMAP server may allow.
IMAP_MIN_LINE = 8192
IMAP_MIN_IDLE_TIMEOUT = 30 * 60.0


def _check_imap(path: str, imap: IMAPConfig) -> None:
    if imap.max_line < IMAP_MIN_LINE:
        # RFC 7162 §4: servers accept command lines of at least 8192 octets.
        raise ConfigError(f"{path}: [imap] max_line: must be at least {IMAP_MIN_LINE} (RFC 7162)")
    if imap.idle_timeout < IMAP_MIN_IDLE_TIMEOUT:
        # RFC 3501 §5.4: the autologout timer is at least 30 minutes.
        raise ConfigError(
            f"{path}: [imap] idle_timeout: must be at least {IMAP_MIN_IDLE_TIMEOUT:.0f} "
            "seconds (RFC 3501 §5.4)"
        )


def endpoint_problem(description: str) -> str | None:
    """Why a Twisted server endpoint string cannot be used, or None if it parses.

    The string is parsed against a memory reactor, so nothing is bound. ``systemd:``
    endpoints are left to start-up: parsing them needs the sockets systemd passes in.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    if description.partition(":")[0] == "systemd":
        return None
    try:
        serverFromString(MemoryReactor(), description)
    except (ValueError, TypeError, KeyError, OSError) as e:
        return str(e) or type(e).__name__
    return None


def _check_queue(path: str, queue: QueueConfig) -> None:
    if queue.mx_tls not in ("opportunistic", "verify", "never"):
        raise ConfigError(
            f"{path}: [queue] mx_tls: expected opportunistic, verify or never, got {queue.mx_tls!r}"
        )
    if queue.relay_host:
        host, _, port = queue.relay_host.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{path}: [queue] relay_host: expected host:port")
    if queue.relay_tls not in ("", "starttls", "implicit"):
        raise ConfigError(
            f"{path}: [queue] relay_tls: expected starttls or implicit, got {queue.relay_tls!r}"
        )
    if queue.relay_password and queue.relay_password_file:
        raise ConfigError(f"{path}: [queue] relay_password_file: give it or relay_password")
    if queue.min_backoff > queue.max_backoff:
        raise ConfigError(f"{path}: [queue] min_backoff: greater than max_backoff")
    if queue.delay_warning < 0:
        raise ConfigError(f"{path}: [queue] delay_warning: must be 0 or more")
    for nameserver in queue.nameservers:
        address = nameserver
        if nameserver.startswith("["):
            address = nameserver[1:].partition("]")[0]
        elif nameserver.count(":") == 1:
            address, _, port = nameserver.partition(":")
            if not port.isdigit():
                raise ConfigError(f"{path}: [queue] nameservers: bad port in {nameserver!r}")
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ConfigError(
                f"{path}: [queue] nameservers: {nameserver!r} is not an IP address"
            ) from None
