"""The servers under test: ours (twistd in a temporary directory) and the shared peers.

Every server is started on free loopback ports of its own and in a private run
directory, so a benchmark never meets the ``make run`` instance or someone else's
peers.  ``stop()`` is safe to call twice and after a failed ``start()``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
USERS = ("alice@example.test", "bob@example.test")
PASSWORD = "secret"


class ServerError(RuntimeError):
    pass


@dataclass
class Endpoint:
    """Where a running server listens and which process trees are charged for it."""

    smtp_port: int | None
    imap_port: int | None
    pop3_port: int | None
    maildir_root: str
    pids: list[int]
    notes: dict[str, str] = field(default_factory=dict)

    def user_maildir(self, address: str) -> str:
        local, domain = address.split("@")
        return os.path.join(self.maildir_root, domain, local)

    @property
    def pid_arg(self) -> str:
        return " ".join(str(p) for p in self.pids)


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (outside the peers' 20000-21999 defaults)."""
    ports: list[int] = []
    held: list[socket.socket] = []
    try:
        while len(ports) < count:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
            port = s.getsockname()[1]
            if not 20000 <= port < 22000:
                ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def wait_for_ports(ports: Iterable[int], alive: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            if alive.poll() is not None:
                raise ServerError(f"server exited with status {alive.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise ServerError(f"nothing listens on port {port} after {timeout}s") from None
                time.sleep(0.05)


# The peers are tuned for 500 sessions from one address (see postfix-dovecot.sh); so are we.
CONNECTION_LIMIT = 5000
# Raised in [smtp], [imap] and [pop3] wherever the configuration schema has them.
LIMIT_KEYS = ("max_connections", "max_connections_per_client", "max_sessions_per_user")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def dump_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Enough TOML for our configuration: tables of scalars, lists and sub-tables."""
    scalars = [(k, v) for k, v in data.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in data.items() if isinstance(v, dict)]
    out = [f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in scalars]
    for key, table in tables:
        name = f"{prefix}.{_toml_key(key)}" if prefix else _toml_key(key)
        out.append(f"\n[{name}]\n" + dump_toml(table, name))
    return "".join(out)


def raise_connection_limits(path: str) -> None:
    """Lift the per-client and per-user limits (500 idle sessions of one user come from
    127.0.0.1, as Dovecot's mail_max_userip_connections is raised in the peer)."""
    from mailserver import config as schema

    with open(path, "rb") as f:
        data = tomllib.load(f)
    for section in ("smtp", "imap", "pop3"):
        known = {f.name for f in dataclasses.fields(schema.SECTIONS[section])}
        for key in LIMIT_KEYS:
            if key in known:
                data.setdefault(section, {})[key] = CONNECTION_LIMIT
    with open(path, "w") as f:
        f.write(dump_toml(data))


def sha512_crypt(password: str) -> str:
    """A ``{SHA512-CRYPT}`` hash like the peer's (``openssl passwd -6``: 5000 rounds)."""
    from passlib.hash import sha512_crypt as handler

    return "{SHA512-CRYPT}" + handler.using(rounds=5000).hash(password)


class OurServer:
    """``twistd -n mailserver`` on free ports with an empty store in ``workdir``."""

    name = "ours"

    def __init__(self, workdir: str, passwd_scheme: str = "SHA512-CRYPT") -> None:
        self.workdir = os.path.abspath(workdir)
        self.passwd_scheme = passwd_scheme
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.config = ""

    def start(self) -> Endpoint:
        from tests.e2e.harness import write_config

        if not self.ports:
            smtp, imap, pop3 = free_ports(3)
            self.ports = {"smtp": smtp, "imap": imap, "pop3": pop3}
            self.config = write_config(self.workdir, self.ports)
            raise_connection_limits(self.config)
            if self.passwd_scheme == "SHA512-CRYPT":
                with open(os.path.join(self.workdir, "passwd"), "w") as f:
                    f.writelines(f"{user}:{sha512_crypt(PASSWORD)}\n" for user in USERS)
        with open(os.path.join(self.workdir, "twistd.log"), "ab") as log:
            self.process = subprocess.Popen(
                [TWISTD, "-n", "--pidfile", "", "mailserver", "--config", self.config],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        try:
            wait_for_ports(self.ports.values(), self.process, 60)
        except ServerError as e:
            self.stop()
            raise ServerError(
                f"our server did not start ({e}); see {self.workdir}/twistd.log"
            ) from None
        return self.endpoint

    @property
    def endpoint(self) -> Endpoint:
        assert self.process is not None
        return Endpoint(
            smtp_port=self.ports["smtp"],
            imap_port=self.ports["imap"],
            pop3_port=self.ports["pop3"],
            maildir_root=os.path.join(self.workdir, "run", "Maildir"),
            pids=[self.process.pid],
            notes={"passwd_scheme": self.passwd_scheme, "config": self.config},
        )

    def restart(self) -> Endpoint:
        """A fresh process on the same ports and store (memory figures start clean)."""
        self.stop()
        return self.start()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _parse_env(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            parts = shlex.split(value) if value else [""]
            env[key.strip()] = parts[0] if parts else ""
    return env


class _ScriptPeer:
    """A peer driven by a shared ``start | env | stop`` script."""

    name = ""

    def __init__(self, workdir: str, command: list[str], ports: dict[str, int]) -> None:
        self.workdir = os.path.abspath(workdir)
        self.command = command
        self.env = dict(os.environ)
        self.env["PEERS_STATE_DIR"] = os.path.join(self.workdir, "state")
        self.env.update({key: str(port) for key, port in ports.items()})
        self.started = False
        self.endpoint: Endpoint | None = None
        self.start_args: list[str] = []
        self.log = os.path.join(self.workdir, "peer.log")

    def _run(self, *args: str, capture: bool = False, timeout: float = 600) -> str:
        os.makedirs(self.workdir, exist_ok=True)
        with open(self.log, "ab") as log:
            # Daemons inherit stdout: only `env` (which starts nothing) is captured.
            done = subprocess.run(
                [*self.command, *args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture else log,
                stderr=log,
                timeout=timeout,
                check=False,
            )
        if done.returncode != 0:
            raise ServerError(
                f"{self.name} {args[0]} failed (status {done.returncode}); see {self.log}"
            )
        return done.stdout.decode() if capture else ""

    def start(self) -> Endpoint:
        self.started = True
        self._run("start", *self.start_args)
        env = _parse_env(self._run("env", capture=True))
        self.endpoint = self._endpoint(env)
        if not self.endpoint.pids:
            raise ServerError(f"{self.name}: no server PIDs in its env output")
        return self.endpoint

    def _endpoint(self, env: dict[str, str]) -> Endpoint:
        raise NotImplementedError

    def stop(self) -> None:
        if self.started:
            self.started = False
            self._run("stop", timeout=120)


def _pids(text: str) -> list[int]:
    return [int(p) for p in text.split() if p.isdigit()]


class PostfixDovecot(_ScriptPeer):
    """``peers/postfix-dovecot.sh``: Postfix (SMTP) + Dovecot (IMAP, POP3)."""

    name = "postfix-dovecot"

    def __init__(self, workdir: str, shared: str) -> None:
        keys = (
            "SMTP_PORT",
            "SUBMISSION_PORT",
            "IMAP_PORT",
            "IMAPS_PORT",
            "POP3_PORT",
            "POP3S_PORT",
        )
        ports = dict(zip(keys, free_ports(len(keys)), strict=True))
        script = os.path.join(shared, "peers", "postfix-dovecot.sh")
        super().__init__(workdir, ["bash", script], ports)

    def _endpoint(self, env: dict[str, str]) -> Endpoint:
        return Endpoint(
            smtp_port=int(env["SMTP_PORT"]),
            imap_port=int(env["IMAP_PORT"]),
            pop3_port=int(env["POP3_PORT"]),
            maildir_root=env["MAILDIR_ROOT"],
            pids=_pids(env.get("SERVER_PIDS", "")),
            notes={"passwd_scheme": "SHA512-CRYPT", "delivery": env.get("SMTP_DELIVERY", "")},
        )


class Aiosmtpd(_ScriptPeer):
    """``peers/aiosmtpd_maildir.py`` (SMTP only), delivering in a thread with fsync."""

    name = "aiosmtpd"

    def __init__(self, workdir: str, shared: str) -> None:
        (port,) = free_ports(1)
        script = os.path.join(shared, "peers", "aiosmtpd_maildir.py")
        super().__init__(workdir, [sys.executable, script], {"AIOSMTPD_PORT": port})
        self.delivery = "thread"
        self.start_args = ["--delivery", self.delivery]

    def _endpoint(self, env: dict[str, str]) -> Endpoint:
        return Endpoint(
            smtp_port=int(env["SMTP_PORT"]),
            imap_port=None,
            pop3_port=None,
            maildir_root=env["MAILDIR_ROOT"],
            pids=_pids(env.get("SERVER_PIDS", "")),
            notes={"delivery": self.delivery},
        )


def reset_mailbox(userdir: str, trash: str) -> None:
    """Empty one user's INBOX for the next workload: message files and every server's
    index (``dovecot*``, ``mailserver-uidlist``); folders and the directories stay.

    The message files are moved into ``trash`` (a directory on the same filesystem,
    emptied when the bench ends), not unlinked. Without a journal, as on the bench
    machines, ext4 will not reuse an inode freed in the last 30 seconds
    (``recently_deleted``) and makes every new file in that block group step over each
    of them: after 10,000 unlinks an ``open(O_CREAT)`` took 200-400 µs instead of 10, a
    cost of the harness's cleanup charged to whichever server wrote next.
    """
    if not os.path.isdir(userdir):
        return
    os.makedirs(trash, exist_ok=True)
    bin_ = tempfile.mkdtemp(dir=trash)
    for sub in ("new", "cur", "tmp"):
        path = os.path.join(userdir, sub)
        if os.path.isdir(path):
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        os.rename(entry.path, os.path.join(bin_, f"{sub}-{entry.name}"))
    with os.scandir(userdir) as entries:
        for entry in entries:
            if entry.name.startswith("dovecot") or entry.name == "mailserver-uidlist":
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
