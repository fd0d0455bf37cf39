"""Start the real server on ephemeral loopback ports with a temporary store."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable

from twisted.trial import unittest

from mailserver.config import load
from mailserver.service import MailServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PASSWORD = "secret"
ALICE = "alice@example.test"
BOB = "bob@example.test"
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def write_config(
    directory: str,
    ports: dict[str, int] | None = None,
    extra: str = "",
    domain: str = "example.test",
    trace: bool = False,
    plaintext_on_loopback: bool = True,
) -> str:
    """A configuration like the embedded default, in ``directory``, on the given ports
    (0 = ephemeral), with an empty store, serving ``domain``; returns its path."""
    os.makedirs(directory, exist_ok=True)
    shutil.copy(os.path.join(ROOT, "etc", "passwd"), os.path.join(directory, "passwd"))
    ports = ports or {}

    def listener(name: str) -> str:
        return f'["tcp:{ports.get(name, 0)}:interface=127.0.0.1"]'

    path = os.path.join(directory, "mailserver.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(
            f"""
[server]
hostname = "mail.example.test"
run_dir = "run"
trace = {"true" if trace else "false"}

[domains]
local = ["{domain}"]

[store]
maildir = "run/Maildir"

[accounts]
passwd_file = "passwd"

[accounts.aliases]
"postmaster@example.test" = ["alice@example.test"]
"office@example.test" = ["alice@example.test", "bob@example.test"]
"büro@example.test" = ["alice@example.test"]

[listeners]
smtp = {listener("smtp")}
submission = {listener("submission")}
submissions = {listener("submissions")}
imap = {listener("imap")}
imaps = {listener("imaps")}
pop3 = {listener("pop3")}
pop3s = {listener("pop3s")}

[auth]
allow_plaintext_on_loopback = {"true" if plaintext_on_loopback else "false"}
{extra}
"""
        )
    return path


class ServerTestCase(unittest.TestCase):
    """Runs a MailServer in the test's reactor; ``self.ports`` maps role to port."""

    extra_config = ""
    trace = False
    plaintext_on_loopback = True

    async def start_server(self) -> MailServer:
        self.directory = os.path.abspath(self.mktemp())
        path = write_config(
            self.directory,
            extra=self.extra_config,
            trace=self.trace,
            plaintext_on_loopback=self.plaintext_on_loopback,
        )
        self.config = load(path)
        self.server = MailServer(self.config)
        self.server.startService()
        self.addCleanup(self.server.stopService)
        self.ports: dict[str, int] = {}
        for role, listeners in self.server.listeners.items():
            port = await listeners[0].listening
            self.ports[role] = port.getHost().port
        return self.server

    def maildir(self, address: str, folder: str = "") -> str:
        local, domain = address.split("@")
        return os.path.join(self.directory, "run", "Maildir", domain, local, folder)


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class ServerProcess:
    """The real ``twistd -n mailserver`` in a subprocess (for crash tests)."""

    def __init__(
        self, directory: str, ports: dict[str, int], extra: str = "", flags: tuple[str, ...] = ()
    ) -> None:
        self.directory = directory
        self.ports = ports
        self.flags = flags  # more options of ``twistd mailserver`` (``--trace``)
        self.config = write_config(directory, ports, extra)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(os.path.join(self.directory, "twistd.log"), "ab")
        self.process = subprocess.Popen(
            [
                TWISTD,
                "-n",
                "--pidfile",
                "",
                "mailserver",
                "--config",
                self.config,
                *self.flags,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        log.close()
        wait_for_ports(self.ports.values(), self.process)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_for_ports(ports: Iterable[int], process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    for port in ports:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
