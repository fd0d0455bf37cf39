"""The twistd plugin's options and service maker: ``twistd -n mailserver --config FILE``."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import NoReturn

from twisted.application.service import IService
from twisted.python import usage

from mailserver.accounts import check_passwd_file
from mailserver.config import Config, ConfigError, load
from mailserver.queue.service import check_queue_files
from mailserver.service import MailServer, check_tls_files

DEFAULT_CONFIG = "etc/mailserver.toml"


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
        return MailServer(options.config)
    except ConfigError as e:
        # The run directory, the store or the development certificate cannot be made.
        refuse(e)
