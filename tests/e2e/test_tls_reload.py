"""The real server's certificate: reloaded on SIGHUP without dropping sessions; a bad
key file stops start-up with one line naming [tls]."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mailserver.tls import ensure_dev_certificate
from tests.e2e.harness import TWISTD, ServerProcess, free_ports, write_config

TLS_TOML = '[tls]\ncert_file = "server.pem"\nkey_file = "server.key"\n'


def install(source_dir: str, directory: str) -> bytes:
    """Copy a certificate and key into the server's directory; the leaf in DER."""
    shutil.copy(os.path.join(source_dir, "server.key"), os.path.join(directory, "server.key"))
    shutil.copy(os.path.join(source_dir, "server.pem"), os.path.join(directory, "server.pem"))
    with open(os.path.join(directory, "server.pem"), "rb") as f:
        return x509.load_pem_x509_certificates(f.read())[0].public_bytes(Encoding.DER)


def served_certificate(port: int) -> tuple[bytes, ssl.SSLSocket]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30))
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der, tls


class ReloadTests(unittest.TestCase):
    def test_sighup_reloads_the_certificate_and_keeps_sessions(self) -> None:
        with tempfile.TemporaryDirectory() as directory:
            first = ensure_dev_certificate(os.path.join(directory, "a"), "one.example.test")
            second = ensure_dev_certificate(os.path.join(directory, "b"), "two.example.test")
            first_der = install(os.path.dirname(first[1]), directory)
            (pop3s,) = free_ports(1)
            server = ServerProcess(directory, {"pop3s": pop3s}, extra=TLS_TOML)
            server.start()
            try:
                der, old_session = served_certificate(pop3s)
                self.assertEqual(der, first_der)
                greeting = old_session.recv(100)
                self.assertTrue(greeting.startswith(b"+OK"))
                second_der = install(os.path.dirname(second[1]), directory)
                assert server.process is not None
                os.kill(server.process.pid, signal.SIGHUP)
                deadline = time.monotonic() + 10
                while True:
                    der, new_session = served_certificate(pop3s)
                    new_session.close()
                    if der == second_der or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
                self.assertEqual(der, second_der)
                old_session.sendall(b"CAPA\r\n")  # the old session goes on, on the old key
                self.assertTrue(old_session.recv(1000).startswith(b"+OK"))
                old_session.close()
            finally:
                server.stop()

    def test_a_bad_key_stops_start_up_with_one_line(self) -> None:
        with tempfile.TemporaryDirectory() as directory:
            certs = ensure_dev_certificate(os.path.join(directory, "a"), "one.example.test")
            install(os.path.dirname(certs[1]), directory)
            with open(os.path.join(directory, "server.key"), "w") as f:
                f.write("not a key\n")
            config = write_config(directory, {}, TLS_TOML)
            result = subprocess.run(
                [TWISTD, "-n", "--pidfile", "", "mailserver", "--config", config],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=directory,
            )
            self.assertNotEqual(result.returncode, 0)
            self.assertIn(
                f"{config}: [tls]: {directory}/server.key: not a PEM private key",
                result.stderr + result.stdout,
            )
            self.assertNotIn("Traceback", result.stderr + result.stdout)
