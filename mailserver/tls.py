"""TLS for every listener: the server's certificate, a development CA, and the policy.

Only TLS 1.2 and 1.3 with forward-secret AEAD ciphers are accepted. The certificate and
key are re-read on :meth:`ServerTLS.reload` (the server calls it on SIGHUP): new
handshakes use the new certificate, established sessions keep theirs.

Without a configured certificate the server makes a development CA and a certificate
for its host name, ``localhost``, 127.0.0.1 and ::1 in the run directory, so that
clients can verify the server by trusting ``run/tls/ca.pem``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

# Mozilla's "intermediate" list for TLS 1.2; TLS 1.3 suites are always enabled by OpenSSL.
CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    )
)


class TLSConfigError(Exception):
    """The certificate or key cannot be used; the message names the file."""


def load_options(cert_path: str, key_path: str) -> ssl.CertificateOptions:
    """Server options from PEM files (the certificate file may hold the whole chain)."""
    try:
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
    except OSError as e:
        raise TLSConfigError(f"{cert_path}: {e.strerror}") from None
    try:
        with open(key_path, "rb") as f:
            key_pem = f.read()
    except OSError as e:
        raise TLSConfigError(f"{key_path}: {e.strerror}") from None
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as e:
        raise TLSConfigError(f"{cert_path}: not a PEM certificate ({e})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise TLSConfigError(f"{key_path}: not a PEM private key without a passphrase") from None
    options = ssl.CertificateOptions(
        privateKey=key,  # type: ignore[arg-type]
        certificate=chain[0],  # type: ignore[arg-type]
        extraCertChain=chain[1:],  # type: ignore[arg-type]
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(CIPHERS),
    )
    try:
        context = options.getContext()
        context.check_privatekey()
    except SSL.Error:
        raise TLSConfigError(f"{key_path}: does not match the certificate {cert_path}") from None
    return options


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """What listeners and STARTTLS hand to Twisted; swaps its options on reload."""

    def __init__(self, cert_path: str, key_path: str) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self._options = load_options(cert_path, key_path)

    def reload(self) -> None:
        try:
            self._options = load_options(self.cert_path, self.key_path)
        except TLSConfigError as e:
            log.error("TLS reload failed, keeping the old certificate: {error}", error=e)
            return
        log.info("TLS certificate reloaded from {path}", path=self.cert_path)

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return self._options.serverConnectionForTLS(tlsProtocol)


def ensure_dev_certificate(directory: str, hostname: str) -> tuple[str, str, str]:
    """Paths (ca, cert, key) of a development CA and server certificate, made if absent."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    ca_path = os.path.join(directory, "ca.pem")
    cert_path = os.path.join(directory, "server.pem")
    key_path = os.path.join(directory, "server.key")
    if all(os.path.exists(p) for p in (ca_path, cert_path, key_path)):
        return ca_path, cert_path, key_path
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailserver development CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost")]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    _write(
        key_path,
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        0o600,
    )
    _write(cert_path, cert.public_bytes(pem) + ca.public_bytes(pem), 0o644)
    _write(ca_path, ca.public_bytes(pem), 0o644)
    log.info(
        "made a development certificate for {hostname} in {directory}",
        hostname=hostname,
        directory=directory,
    )
    return ca_path, cert_path, key_path


def _write(path: str, data: bytes, mode: int) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
