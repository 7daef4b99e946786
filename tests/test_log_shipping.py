"""The worker's log shipper: lines go in order, in batches, and the last batch rides on the finished report."""

from __future__ import annotations

from protocol.messages import LogRecord, LogsAnswer
from worker.logs import MAX_BATCH, LogShipper


class RecordingClient:
    """The node API as the shipper sees it, recording each batch it is sent."""

    def __init__(self, answer: dict | None = None):
        self.batches: list[list[dict]] = []
        self.answer = answer or {}

    def logs(self, attempt_id: int, lines: list[LogRecord]) -> LogsAnswer:
        self.batches.append([line.to_wire() for line in lines])
        return LogsAnswer.from_wire({"stored": len(lines), **self.answer})


def test_a_short_ops_lines_are_kept_for_the_finished_report():
    client = RecordingClient()
    shipper = LogShipper(client, 7, interval_s=60)
    shipper.add("stdout", "hello")
    shipper.add("stderr", "world")
    rest = shipper.finish()
    assert client.batches == []
    assert [(line.seq, line.stream, line.text) for line in rest] == [(1, "stdout", "hello"), (2, "stderr", "world")]


def test_all_but_the_last_batch_are_sent_before_the_finished_report():
    client = RecordingClient()
    shipper = LogShipper(client, 7, interval_s=60)
    for i in range(MAX_BATCH + 5):
        shipper.add("stdout", f"line {i}")
    rest = shipper.finish()
    assert [len(batch) for batch in client.batches] == [MAX_BATCH]
    assert [line.seq for line in rest] == list(range(MAX_BATCH + 1, MAX_BATCH + 6))


def test_close_sends_everything():
    client = RecordingClient()
    shipper = LogShipper(client, 7, interval_s=60)
    shipper.add("stdout", "hello")
    shipper.close()
    assert [[line["text"] for line in batch] for batch in client.batches] == [["hello"]]


def test_nothing_rides_on_the_report_once_the_log_is_full():
    client = RecordingClient({"log_full": True})
    shipper = LogShipper(client, 7, interval_s=60)
    for i in range(MAX_BATCH + 1):
        shipper.add("stdout", f"line {i}")
    assert shipper.finish() == []
    assert len(client.batches) == 1
