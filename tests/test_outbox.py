"""The worker's outbox: outcomes kept on disk, one file per attempt, until the server takes them."""

from __future__ import annotations

from protocol.messages import FinishedReport, LogRecord, ReleaseReport
from worker.outbox import Outbox


def test_an_outcome_outlives_the_process_that_kept_it_and_goes_once_removed(tmp_path):
    report = FinishedReport(exit_code=3, error="boom", lines=tuple(LogRecord(i, "stdout", f"line-{i}") for i in range(1, 2500)))
    Outbox(tmp_path / "outbox").put(7, report)
    Outbox(tmp_path / "outbox").put(12, ReleaseReport(reason="its worker was stopped"))

    again = Outbox(tmp_path / "outbox")  # as a worker started anew finds it
    assert again.held() == [7, 12]
    assert again.get(7) == report and again.get(12) == ReleaseReport(reason="its worker was stopped")
    again.remove(7)
    assert again.held() == [12] and again.get(7) is None
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == ["12.json"]  # no temporary files left


def test_an_outcome_that_cannot_be_read_is_set_aside_not_sent_forever(tmp_path, caplog):
    outbox = Outbox(tmp_path)
    (tmp_path / "5.json").write_text('{"attempt_id": 5, "finished": {"exit')

    assert outbox.held() == [5]
    assert outbox.get(5) is None
    assert outbox.held() == [] and (tmp_path / "5.bad").exists()
    assert "cannot read the kept outcome of attempt 5" in caplog.text


def test_without_a_folder_outcomes_are_kept_in_memory():
    outbox = Outbox(None)
    outbox.put(1, FinishedReport(exit_code=0))
    assert outbox.held() == [1] and outbox.get(1) == FinishedReport(exit_code=0)
    outbox.remove(1)
    assert outbox.held() == []


def test_an_outbox_that_cannot_be_made_is_refused_with_a_sentence(tmp_path):
    import pytest

    from worker.errors import WorkerError

    (tmp_path / "a-file").write_text("")
    with pytest.raises(WorkerError, match="cannot be made") as refused:
        Outbox(tmp_path / "a-file" / "outbox")
    assert "--data-dir" in str(refused.value)
