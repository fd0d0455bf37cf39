"""The twistd plugin's options and service maker: ``twistd -n mailserver --config FILE``."""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
from typing import NoReturn

from twisted.application.service import IService
from twisted.python import usage

from mailserver.accounts import check_passwd_file
from mailserver.config import Config, ConfigError, load
from mailserver.queue.service import check_queue_files
from mailserver.service import MailServer, check_tls_files
from mailserver.textlog import observer_for

DEFAULT_CONFIG = "etc/mailserver.toml"
# A mail server keeps large indexes alive for as long as it runs (a folder of 10,000
# messages is some 30,000 objects). With CPython's default thresholds (700, 10, 10) the
# cycle collector walks all of them again and again: a full collection with one such
# folder open took 60 ms, a pause every client of the reactor felt (a POP3 UIDL of 5 ms
# took 65). Reference counting still frees at once all that is not a cycle; cycles wait
# for rarer collections.
GC_THRESHOLDS = (50_000, 20, 20)


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = "A small-office mail server: SMTP, IMAP and POP3 over one Maildir store."
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "The TOML configuration file."],
    ]
    optFlags = [
        ["trace", None, "Trace every protocol line (as [server] trace = true)."],
    ]

    def postOptions(self) -> None:
        path = self["config"]
        try:
            if not os.path.exists(path):
                raise ConfigError(f"{path}: file not found")
            config = load(path)
            check_passwd_file(config)
            check_tls_files(config)
            check_queue_files(config)
        except ConfigError as e:
            # One line, not twistd's usage text followed by the error (a UsageError).
            refuse(e)
        if self["trace"]:
            config = dataclasses.replace(
                config, server=dataclasses.replace(config.server, trace=True)
            )
        self.config: Config = config


def refuse(error: ConfigError) -> NoReturn:
    """Stop start-up with one line on stderr naming the file and the key."""
    sys.stderr.write(f"mailserver: {error}\n")
    raise SystemExit(1)


def makeService(options: Options) -> IService:
    try:
        server = MailServer(options.config)
    except ConfigError as e:
        # The run directory, the store or the development certificate cannot be made.
        refuse(e)
    twistd_options = getattr(options, "parent", None)
    if twistd_options is not None:
        server.log_observer = observer_for(twistd_options)
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()  # what start-up built (modules, configuration) lives as long as we do
    return server
