"""The health file (protocol.liveness): beats coalesced into atomic rewrites, and overdue loops found."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from protocol.liveness import GRACE_S, Liveness, examine, late_after

ROOT = Path(__file__).resolve().parents[1]


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_a_beat_writes_the_loop_its_interval_and_detail(tmp_path):
    path = tmp_path / "health.json"
    before = time.time()

    Liveness(path).beat("upkeep", 1, "leading")

    body = read(path)
    assert body["pid"] > 0 and body["written_at"] >= before
    assert body["loops"]["upkeep"]["every_s"] == 1.0 and body["loops"]["upkeep"]["detail"] == "leading"
    assert before <= body["loops"]["upkeep"]["at"] <= time.time()


def test_beats_between_writes_are_kept_and_go_out_with_the_next_write(tmp_path):
    path = tmp_path / "health.json"
    liveness = Liveness(path, write_every_s=60)

    liveness.beat("upkeep", 1, "standing by")
    liveness.beat("upkeep", 1, "leading")
    liveness.beat("consumer", 1)

    assert read(path)["loops"] == {"upkeep": {"at": pytest.approx(time.time(), abs=5), "every_s": 1.0,
                                              "detail": "standing by"}}  # only the first was written
    liveness.flush()
    loops = read(path)["loops"]
    assert loops["upkeep"]["detail"] == "leading" and set(loops) == {"upkeep", "consumer"}


def test_a_beat_after_the_write_interval_writes_again(tmp_path):
    path = tmp_path / "health.json"
    liveness = Liveness(path, write_every_s=0.2)
    liveness.beat("upkeep", 1, "standing by")

    time.sleep(0.25)
    liveness.beat("upkeep", 1, "leading")

    assert read(path)["loops"]["upkeep"]["detail"] == "leading"


def test_many_threads_beating_leave_one_whole_file_and_no_temporary_ones(tmp_path):
    path = tmp_path / "health.json"
    liveness = Liveness(path, write_every_s=0)
    stop = threading.Event()
    torn = []

    def reader():
        while not stop.is_set():
            try:
                read(path)
            except FileNotFoundError:
                pass
            except ValueError as e:
                torn.append(e)

    def beater(n):
        for _ in range(60):
            liveness.beat(f"loop-{n}", 1)

    watching = threading.Thread(target=reader)
    watching.start()
    threads = [threading.Thread(target=beater, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    watching.join()

    assert torn == []
    assert set(read(path)["loops"]) == {f"loop-{n}" for n in range(8)}
    assert [p.name for p in tmp_path.iterdir()] == ["health.json"]


WRITER = """
import sys, time
from protocol.liveness import Liveness
liveness = Liveness(sys.argv[1], write_every_s=0)
deadline = time.monotonic() + 0.5
while time.monotonic() < deadline:
    liveness.beat("hearing", 2)
"""


def test_processes_sharing_one_path_replace_the_file_whole(tmp_path):
    # Given two processes beating into one path, as the web's gunicorn workers do
    path = tmp_path / "health.json"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT) for _ in range(2)]
    pids, torn = set(), 0
    # When the file is read while they write
    while any(w.poll() is None for w in writers):
        try:
            pids.add(read(path)["pid"])
        except FileNotFoundError:
            pass
        except ValueError:
            torn += 1
    # Then every read found one writer's whole file
    assert [w.returncode for w in writers] == [0, 0]
    assert torn == 0 and pids <= {w.pid for w in writers} and pids
    assert examine(path).healthy


def test_no_path_writes_nothing_and_a_folder_that_is_gone_does_not_raise(tmp_path, caplog):
    Liveness(None).beat("upkeep", 1)
    Liveness(None).flush()
    gone = Liveness(tmp_path / "gone" / "health.json")

    gone.beat("upkeep", 1)
    gone.flush()

    assert list(tmp_path.iterdir()) == []
    assert [r.message for r in caplog.records if "cannot write the health file" in r.message] != []
    assert len([r for r in caplog.records if "cannot write" in r.message]) == 1  # said once, not at every beat


def test_a_loop_expected_but_not_yet_gone_round_keeps_its_process_unhealthy(tmp_path):
    """Given a process that started two loops and whose first has gone round, it is not healthy until
    the second has too: a check that waits for health waits for every loop."""
    path = tmp_path / "health.json"
    liveness = Liveness(path, write_every_s=60)
    liveness.expect("upkeep", 1)
    liveness.expect("consumer", 10)
    liveness.beat("upkeep", 1, "leading")
    liveness.flush()

    waiting = examine(path)
    liveness.beat("consumer", 1)
    liveness.expect("consumer", 10)  # once it went round, expecting it again changes nothing
    liveness.flush()
    both = examine(path)

    assert not waiting.healthy
    assert waiting.problems == ("consumer has not gone round yet (0 s since its process started it)",)
    assert both.healthy, both.problems
    assert Liveness(None).expect("x", 1) is None


def test_a_loop_is_dead_past_three_intervals_or_its_interval_and_the_grace():
    assert late_after(1) == 1 + GRACE_S
    assert late_after(10) == 30
    assert late_after(1, grace_s=0.5) == 3


def test_examine_names_the_overdue_loops_with_their_age_interval_and_detail(tmp_path):
    path = tmp_path / "health.json"
    liveness = Liveness(path, write_every_s=0)
    liveness.beat("upkeep", 1, "leading")
    liveness.beat("consumer", 5)
    at = read(path)["loops"]["upkeep"]["at"]

    fresh = examine(path, now=at + 0.4)
    late = examine(path, now=at + 12)  # past 1 + 10 for upkeep; within 3 × 5 for the consumer
    both = examine(path, now=at + 43)

    assert fresh.healthy and fresh.summary() == "upkeep 0.4 s ago (leading), consumer 0.4 s ago"
    assert late.problems == ("upkeep last went round 12 s ago, leading (it goes round every 1 s)",)
    assert [b.name for b in both.loops if b.dead] == ["upkeep", "consumer"] and len(both.problems) == 2
    assert examine(path, now=at + 3.5, grace_s=2).problems[0].startswith("upkeep last went round 4 s ago")


@pytest.mark.parametrize("content,says", [
    (None, "there is no health file at"),
    ("", "is not a health file: it is not JSON"),
    ('{"pid": 1, "loops": {"upk', "is not a health file: it is not JSON"),
    ("[1, 2]", 'is not a health file: it has no "loops" object'),
    ('{"loops": {"upkeep": 3}}', "loop 'upkeep' is not an object"),
    ('{"loops": {"upkeep": {"at": "now", "every_s": 1}}}', "loop 'upkeep' lacks a time"),
    ('{"loops": {"upkeep": {"at": 1, "every_s": 0}}}', "a positive interval"),
    ('{"loops": {"upkeep": {"at": Infinity, "every_s": 1}}}', "loop 'upkeep' lacks a time"),
    ('{"loops": {"upkeep": {"at": 1, "every_s": 1, "detail": 7}}}', "the detail of loop 'upkeep' is not text"),
    ('{"pid": 1, "loops": {}}', "names no loop"),
])
def test_a_missing_or_garbled_file_is_one_sentence(tmp_path, content, says):
    path = tmp_path / "health.json"
    if content is not None:
        path.write_text(content)

    checkup = examine(path)

    assert not checkup.healthy and checkup.loops == ()
    assert len(checkup.problems) == 1 and says in checkup.problems[0] and str(path) in checkup.problems[0]


def test_an_unreadable_file_is_one_sentence(tmp_path):
    checkup = examine(tmp_path)  # a folder where the file should be

    assert checkup.problems == (f"cannot read the health file {tmp_path}: Is a directory",)
