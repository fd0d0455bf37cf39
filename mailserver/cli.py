"""The ``mailserver`` admin command: check-config, user add/passwd/list."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from mailserver.accounts import (
    PasswdFileError,
    check_passwd_file,
    hash_password,
    read_passwd,
    set_password,
)
from mailserver.config import ConfigError, load
from mailserver.names import BadName, normalize_address
from mailserver.queue import cli as queue_cli
from mailserver.queue.service import check_queue_files
from mailserver.service import check_tls_files
from mailserver.trace import TRACE_FILE, follow_file

DEFAULT_CONFIG = "etc/mailserver.toml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mailserver", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check-config", help="check a configuration file")
    check.add_argument("config", nargs="?", default=DEFAULT_CONFIG)

    user = commands.add_parser("user", help="manage the users of the passwd-file")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    for name, text in (("add", "add a user"), ("passwd", "change a user's password")):
        sub = user_commands.add_parser(name, help=text)
        sub.add_argument("address")
        sub.add_argument("--config", default=DEFAULT_CONFIG)
        sub.add_argument(
            "--password-stdin", action="store_true", help="read the password from standard input"
        )
    listing = user_commands.add_parser("list", help="list the users")
    listing.add_argument("--config", default=DEFAULT_CONFIG)

    queue_cli.add_parser(commands, DEFAULT_CONFIG)

    trace = commands.add_parser(
        "trace", help="follow the protocol trace of a server running with trace on"
    )
    trace.add_argument("--config", default=DEFAULT_CONFIG)
    trace.add_argument("--json", action="store_true", help="print the raw JSON lines")
    trace.add_argument("--from-start", action="store_true", help="show the earlier events too")
    trace.add_argument("--no-follow", action="store_true", help="stop at the end of the file")

    args = parser.parse_args(argv)
    try:
        if args.command == "check-config":
            return check_config(args.config)
        if args.command == "queue":
            return queue_cli.run(args)
        if args.command == "trace":
            return trace_command(args)
        return user_command(args)
    except (ConfigError, PasswdFileError, BadName) as e:
        print(f"mailserver: {e}", file=sys.stderr)
        return 1


def check_config(path: str) -> int:
    config = load(path)
    check_passwd_file(config)
    check_tls_files(config)
    check_queue_files(config)
    print(f"{path}: OK")
    return 0


def trace_command(args: argparse.Namespace) -> int:
    config = load(args.config)
    path = os.path.join(config.resolve(config.server.run_dir), TRACE_FILE)
    if not config.server.trace:
        print(
            f"mailserver: trace is off in {args.config} (a server started with --trace "
            f"writes it all the same); following {path}",
            file=sys.stderr,
        )
    if not os.path.exists(path):
        print(f"mailserver: waiting for {path} (the server writes it at start)", file=sys.stderr)
    try:
        follow_file(
            path,
            lambda line: print(line, flush=True),
            raw=args.json,
            from_start=args.from_start,
            keep_following=not args.no_follow,
        )
    except KeyboardInterrupt:
        pass
    return 0


def user_command(args: argparse.Namespace) -> int:
    config = load(args.config)
    passwd = config.resolve(config.accounts.passwd_file)
    accounts = read_passwd(passwd) if os.path.exists(passwd) else {}
    if args.user_command == "list":
        for account in sorted(accounts.values(), key=lambda a: a.address):
            print(account.address)
        return 0
    address = normalize_address(args.address)
    domain = address.rpartition("@")[2]
    exists = address.lower() in accounts
    if args.user_command == "add":
        if exists:
            print(f"mailserver: {address} exists already", file=sys.stderr)
            return 1
        if domain not in config.domains.local:
            print(f"mailserver: {domain} is not a local domain of {args.config}", file=sys.stderr)
            return 1
    elif not exists:
        print(f"mailserver: no such user {address}", file=sys.stderr)
        return 1
    password = read_password(args.password_stdin)
    if not password:
        print("mailserver: empty password refused", file=sys.stderr)
        return 1
    # Checked again under the file's lock: another edit may have come in meanwhile.
    set_password(passwd, address, hash_password(password), add=args.user_command == "add")
    print(f"{address}: {'added' if args.user_command == 'add' else 'password changed'}")
    return 0


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise SystemExit("mailserver: the passwords differ")
    return first


if __name__ == "__main__":
    sys.exit(main())
