"""The twistd service maker: the configuration it checks, and the process it tunes."""

from __future__ import annotations

import gc

import pytest

from mailserver import tap
from mailserver.service import MailServer
from tests.e2e.harness import write_config


def test_make_service_builds_the_server_and_tunes_the_collector(tmp_path) -> None:
    options = tap.Options()
    options.parseOptions(["--config", write_config(str(tmp_path))])
    before = gc.get_threshold()
    try:
        server = tap.makeService(options)
        assert isinstance(server, MailServer)
        assert gc.get_threshold() == tap.GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_a_missing_configuration_is_one_line(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        tap.Options().parseOptions(["--config", str(tmp_path / "nope.toml")])
    assert stopped.value.code == 1
    assert capsys.readouterr().err == f"mailserver: {tmp_path / 'nope.toml'}: file not found\n"
