"""The UID list file: what load() reads back is what the appends, removals and
compactions said, and a line cut short by a crash changes nothing it should not."""

from __future__ import annotations

import os
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from mailserver.store import uidlist
from mailserver.store.uidlist import UidList, UidRecord


def _new(folder: str) -> UidList:
    listed = UidList(uidvalidity=1700000000, uidnext=1, records={})
    uidlist.rewrite(folder, listed)
    return listed


def _deliver(folder: str, listed: UidList, base: str) -> UidRecord:
    listed.highest_modseq += 1
    record = UidRecord(listed.uidnext, base, 1700000000.0, 100, listed.highest_modseq, True)
    listed.uidnext += 1
    listed.records[base] = record
    uidlist.append(folder, listed, [record])
    return record


def _expunge(folder: str, listed: UidList, bases: list[str]) -> None:
    removed = [listed.records.pop(base) for base in bases]
    listed.highest_modseq += 1
    uidlist.append(folder, listed, [], removed=removed)


def _lines(folder: str) -> list[str]:
    with open(os.path.join(folder, uidlist.FILENAME)) as f:
        return f.read().splitlines()


def test_an_expunge_is_one_line_and_survives_a_reload(tmp_path: os.PathLike[str]) -> None:
    folder = str(tmp_path)
    listed = _new(folder)
    for n in range(3):
        _deliver(folder, listed, f"{n}.x.host")
    _expunge(folder, listed, ["2.x.host"])  # the last UID, too, is never given again
    lines = _lines(folder)
    assert len(lines) == 5  # the header, three records, the X line: nothing rewritten
    assert lines[-1] == f"X3 M{listed.highest_modseq} :2.x.host"
    again = uidlist.load(folder)
    assert sorted(again.records) == ["0.x.host", "1.x.host"]
    assert again.uidnext == 4
    # RFC 7162: the expunge's mod-sequence is not forgotten, though no record carries it.
    assert again.highest_modseq == listed.highest_modseq == 5


def test_a_line_cut_short_removes_nothing(tmp_path: os.PathLike[str]) -> None:
    folder = str(tmp_path)
    listed = _new(folder)
    _deliver(folder, listed, "1700.M1")
    _deliver(folder, listed, "1700.M12")
    with open(os.path.join(folder, uidlist.FILENAME), "a") as f:
        # "X2 M9 :1700.M12" cut short by a crash, twice: in the middle of the base, and
        # where what is left is UID 1's base. Neither takes a record away.
        f.write("X2 M9 :1700.M\nX2 M9 :1700.M1\nX2 M")
    again = uidlist.load(folder)
    assert sorted(again.records) == ["1700.M1", "1700.M12"]


def test_compaction_drops_the_expunged_lines(tmp_path: os.PathLike[str]) -> None:
    folder = str(tmp_path)
    listed = _new(folder)
    for n in range(1200):
        _deliver(folder, listed, f"{n}.x.host")
    for n in range(0, 1200, 2):
        _expunge(folder, listed, [f"{n}.x.host"])
    # 600 expunges are 1,200 lines beyond the 600 records left: compacted at least once.
    lines = _lines(folder)
    assert len(lines) < 1 + 600 + 1000
    again = uidlist.load(folder)
    assert sorted(r.uid for r in again.records.values()) == list(range(2, 1201, 2))
    assert again.highest_modseq == listed.highest_modseq
    assert again.uidnext == 1201


operations = st.lists(
    st.one_of(
        st.tuples(st.just("deliver"), st.integers(1, 3)),
        st.tuples(st.just("flag"), st.integers(0, 50)),
        st.tuples(st.just("expunge"), st.integers(0, 50)),
        st.tuples(st.just("claim"), st.just(0)),
    ),
    max_size=60,
)


@given(ops=operations)
@settings(max_examples=150, deadline=None)
def test_what_is_loaded_is_what_was_written(ops: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        listed = _new(folder)
        made = 0
        for op, n in ops:
            if op == "deliver":
                for _ in range(n):
                    _deliver(folder, listed, f"{made}.x.host")
                    made += 1
            elif op == "flag" and listed.records:
                record = sorted(listed.records.values(), key=lambda r: r.uid)[
                    n % len(listed.records)
                ]
                listed.highest_modseq += 1
                record.modseq = listed.highest_modseq
                uidlist.append(folder, listed, [record], updated=True)
            elif op == "expunge" and listed.records:
                bases = sorted(listed.records)
                _expunge(folder, listed, bases[n % len(bases) :][:2])
            elif op == "claim":
                listed.first_recent_uid = listed.uidnext
                uidlist.claim_recent(folder, listed)
        again = uidlist.load(folder)
        assert {b: (r.uid, r.modseq) for b, r in again.records.items()} == {
            b: (r.uid, r.modseq) for b, r in listed.records.items()
        }
        assert again.highest_modseq == listed.highest_modseq
        assert again.uidnext == listed.uidnext
        assert again.first_recent_uid == listed.first_recent_uid
