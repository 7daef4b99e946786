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


def test_an_output_archive_is_kept_beside_its_outcome_until_dropped(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "output.tar.gz").write_bytes(b"archive")
    outbox = Outbox(tmp_path / "outbox")
    outbox.put(3, FinishedReport(exit_code=0), artifact=scratch / "output.tar.gz")
    outbox.put(3, FinishedReport(exit_code=0, lines=(LogRecord(1, "stdout", "done"),)))  # the archive stays

    assert not (scratch / "output.tar.gz").exists()  # moved, so the attempt's scratch folder may go
    assert outbox.artifact(3).read_bytes() == b"archive" and outbox.get(3).lines[0].text == "done"
    outbox.drop_artifact(3)
    assert outbox.artifact(3) is None and outbox.held() == [3]
    outbox.put(4, FinishedReport(exit_code=0), artifact=_archive(scratch))
    outbox.remove(4)
    assert outbox.artifact(4) is None and outbox.held() == [3]


def _archive(folder):
    path = folder / "another.tar.gz"
    path.write_bytes(b"x")
    return path


def test_without_a_data_dir_outcomes_are_kept_for_the_life_of_the_process():
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
