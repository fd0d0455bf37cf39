"""The outbound queue as a twisted.application Service.

Build it with the configuration and the local delivery callable (``MDA.deliver``), add it
to the server's MultiService, and hand messages for remote recipients to
:meth:`QueueService.enqueue`.
"""

from __future__ import annotations

import os
import signal
import stat
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, threads
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.logger import Logger

from mailserver.config import Config, ConfigError
from mailserver.queue.mx import MXResolver
from mailserver.queue.scheduler import LocalDeliver, Policy, Scheduler, Transport
from mailserver.queue.spool import WAKE_SIGNAL, Spool
from mailserver.queue.transport import SMTPTransport, TransportSettings
from mailserver.smtp.client import ClientTimeouts, TLSPolicy
from mailserver.trace import Tracer

log = Logger()


def spool_dir(config: Config) -> str:
    """[queue] spool_dir, or "queue" in the run directory."""
    if config.queue.spool_dir:
        return config.resolve(config.queue.spool_dir)
    return os.path.join(config.resolve(config.server.run_dir), "queue")


def relay_credentials(config: Config) -> tuple[str, str] | None:
    """The smarthost login; a password file must be readable by its owner only."""
    queue = config.queue
    if not queue.relay_username:
        return None
    if not queue.relay_password_file:
        return queue.relay_username, queue.relay_password
    path = config.resolve(queue.relay_password_file)
    try:
        mode = os.stat(path).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{config.path}: [queue] relay_password_file: {path} must not be readable "
                "by group or others (chmod 600)"
            )
        with open(path, encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
    except OSError as e:
        raise ConfigError(
            f"{config.path}: [queue] relay_password_file: cannot read {path}: {e.strerror}"
        ) from None
    return queue.relay_username, password


def trust_root(config: Config) -> Any:
    """The CA certificates of [queue] tls_ca_file, or None for the platform's store."""
    if not config.queue.tls_ca_file:
        return None
    path = config.resolve(config.queue.tls_ca_file)
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise ConfigError(
            f"{config.path}: [queue] tls_ca_file: cannot read {path}: {e.strerror}"
        ) from None
    marker = b"-----END CERTIFICATE-----"
    blocks = [b + marker for b in pem.split(marker) if b.strip()]
    try:
        certificates = [Certificate.loadPEM(b) for b in blocks]
    except Exception as e:  # OpenSSL's errors have no common base worth naming
        raise ConfigError(
            f"{config.path}: [queue] tls_ca_file: {path} is not PEM certificates: {e}"
        ) from None
    if not certificates:
        raise ConfigError(f"{config.path}: [queue] tls_ca_file: no certificate in {path}")
    return trustRootFromCertificates(certificates)


def check_queue_files(config: Config) -> None:
    """At start-up and in check-config: the smarthost password file and the CA file
    are readable and safe (ConfigError names the key)."""
    relay_credentials(config)
    trust_root(config)


def transport_settings(config: Config) -> TransportSettings:
    queue = config.queue
    relay_host, relay_port = "", 587
    if queue.relay_host:
        host, _, port = queue.relay_host.rpartition(":")
        relay_host, relay_port = host.strip("[]"), int(port)
    return TransportSettings(
        hostname=config.server.hostname,
        port=queue.mx_port,
        mx_tls=TLSPolicy.NEVER
        if queue.mx_tls == "never"
        else TLSPolicy.REQUIRED
        if queue.mx_tls == "verify"
        else TLSPolicy.OPPORTUNISTIC,
        verify_mx=queue.mx_tls == "verify",
        relay_host=relay_host,
        relay_port=relay_port,
        relay_implicit_tls=queue.relay_tls == "implicit"
        or (not queue.relay_tls and relay_port == 465),
        credentials=relay_credentials(config),
        trust_root=trust_root(config),
        connect_timeout=queue.connect_timeout,
        timeouts=ClientTimeouts(
            greeting=queue.greeting_timeout,
            command=queue.command_timeout,
            data_init=queue.data_init_timeout,
            data_end=queue.data_end_timeout,
        ),
    )


class QueueService(Service):
    """Runs the scheduler over the spool while the service runs.

    ``local_deliver(mail_from, recipients, chunks, session_id) -> Deferred`` delivers
    reports to local senders (``MDA.deliver`` has this signature).
    """

    def __init__(
        self,
        config: Config,
        local_deliver: LocalDeliver,
        reactor: Any = None,
        transport: Transport | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.spool = Spool(spool_dir(config))
        queue = config.queue
        self.resolver: MXResolver | None = None
        if transport is None:
            # One lookup at a time per delivery at most: as many threads as deliveries.
            self.resolver = MXResolver(
                queue.nameservers, queue.dns_timeout, queue.max_deliveries, reactor
            )
            transport = SMTPTransport(reactor, transport_settings(config), self.resolver, tracer)
        policy = Policy(
            hostname=config.server.hostname,
            local_domains=tuple(d.lower() for d in config.domains.local),
            min_backoff=queue.min_backoff,
            max_backoff=queue.max_backoff,
            max_lifetime=queue.max_lifetime,
            delay_warning=queue.delay_warning,
            max_deliveries=queue.max_deliveries,
            max_deliveries_per_domain=queue.max_deliveries_per_domain,
            scan_interval=queue.scan_interval,
        )
        self.scheduler = Scheduler(
            self.spool, transport, policy, local_deliver, reactor, self._blocking
        )
        self.started: defer.Deferred[None] = defer.Deferred()
        self._signal_installed = False
        self._previous_handler: Any = signal.SIG_DFL

    def _blocking(self, function: Any, *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), function, *args
        )

    def startService(self) -> None:
        """Take the spool (one queue runner per spool; the lock also tells the CLI a
        server is running), then recover and schedule what it holds."""
        super().startService()
        self.spool.lock()
        if threading.current_thread() is threading.main_thread():
            # `mailserver queue flush|retry|delete` wakes us to read its request now.
            self._previous_handler = signal.signal(
                WAKE_SIGNAL, lambda *_: self.reactor.callFromThread(self._requested)
            )
            self._signal_installed = True
        d = defer.ensureDeferred(self.scheduler.start())
        d.addErrback(lambda f: log.failure("queue: start-up failed", f))
        d.chainDeferred(self.started)

    def _requested(self) -> None:
        if not self.running:
            return
        if not self.started.called:
            # Still loading the spool: read the request once it is loaded.
            self.started.addCallback(lambda result: (self._requested(), result)[1])
            return
        d = defer.ensureDeferred(self.scheduler.scan())
        d.addErrback(lambda f: log.failure("queue: reading requests", f))

    def stopService(self) -> None:
        super().stopService()
        if self._signal_installed:
            signal.signal(WAKE_SIGNAL, self._previous_handler or signal.SIG_DFL)
            self._signal_installed = False
        self.scheduler.stop()
        self.spool.unlock()
        if self.resolver is not None:
            self.resolver.stop()

    def enqueue(
        self,
        mail_from: str,
        recipients: Sequence[str],
        chunks: Sequence[bytes],
        params: Mapping[str, str | None] | None = None,
        rcpt_params: Mapping[str, Mapping[str, str | None]] | None = None,
    ) -> defer.Deferred[str]:
        """Queue a message; fires with its queue id once it is durably spooled.

        ``params`` are the MAIL FROM parameters that matter here (RFC 3461: RET, ENVID
        as xtext); ``rcpt_params`` maps a recipient to its RCPT TO parameters (NOTIFY as
        "SUCCESS,FAILURE", ORCPT as "rfc822;xtext")."""
        return self.scheduler.enqueue(mail_from, recipients, chunks, params, rcpt_params)
