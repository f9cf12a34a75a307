"""Memory handed back between stages, and the host's memory shared among conversion processes (HostLedger)."""

from __future__ import annotations

import json

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workers import memory
from workers.memory import HostLedger, peak_bytes, resident_bytes

GiB = 1 << 30


def test_claims_fit_in_what_is_free_less_what_claimed_processes_may_still_grow_by(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "resident_bytes", lambda pid="self": 2 * GiB)  # what a claim's process holds now
    ledger = HostLedger(tmp_path / "claims.json")
    assert ledger.claim("a", 6 * GiB, 10 * GiB)
    assert not ledger.claim("b", 6 * GiB, 10 * GiB)  # a may still grow by 6 of the 10 free
    assert not ledger.claim("b", 3 * GiB, 10 * GiB, share=0.5)  # half of the 4 GiB left
    ledger.assign("a", os.getpid())  # its process already holds what it holds
    assert ledger.headroom(ledger.claims(), 10 * GiB) == 10 * GiB - (6 * GiB - 2 * GiB)
    assert ledger.claim("c", 3 * GiB, 10 * GiB) and not ledger.claim("d", 4 * GiB, 10 * GiB)  # 3 left
    ledger.release("a")
    ledger.release("c")
    assert ledger.claims() == {} and ledger.claim("b", 6 * GiB, 10 * GiB)


def test_a_claim_whose_process_ended_no_longer_counts(tmp_path: Path) -> None:
    ledger = HostLedger(tmp_path / "claims.json")
    assert ledger.claim("part", 20 * GiB, 24 * GiB)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    ledger.assign("part", child.pid)  # killed or finished without releasing its claim
    assert ledger.claims() == {}
    assert ledger.claim("next", 20 * GiB, 24 * GiB)


def test_a_large_part_alone_starts_only_when_nothing_else_claims(tmp_path: Path) -> None:
    ledger = HostLedger(tmp_path / "claims.json")
    assert ledger.claim("huge", 40 * GiB, 24 * GiB, alone=True)  # nothing else: it runs, alone
    assert not ledger.claim("second", 40 * GiB, 24 * GiB, alone=True)
    (tmp_path / "claims.json").write_text("{not json")  # a torn file: read as no claims
    assert ledger.claims() == {}


def test_peak_is_at_least_what_is_held_now() -> None:
    assert peak_bytes() >= resident_bytes() > 0


def test_a_claim_names_its_process_by_pid_and_start_time(tmp_path: Path) -> None:
    ledger = HostLedger(tmp_path / "claims.json")
    assert ledger.claim("part", 20 * GiB, 24 * GiB)
    claims = ledger.claims()
    pid, started = claims["part"]["owner"]
    claims["part"]["owner"] = [pid, started + 1]  # the same pid, given to a later process
    (tmp_path / "claims.json").write_text(json.dumps(claims))
    assert ledger.claims() == {}  # not taken for the process that claimed


def test_a_ledger_it_may_not_share_leaves_the_free_memory_as_the_budget(tmp_path: Path) -> None:
    (tmp_path / "claims.lock").mkdir()  # cannot be opened as a file, as another user's would be refused
    ledger = HostLedger(tmp_path / "claims.json")
    assert ledger.claim("a", 6 * GiB, 10 * GiB) and not ledger.claim("b", 12 * GiB, 10 * GiB)
