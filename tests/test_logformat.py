import json
import logging

from cli.logformat import JsonFormatter, TextFormatter


def _record(**ids) -> logging.LogRecord:
    record = logging.LogRecord("worker.agent", logging.INFO, __file__, 1, "running attempt %s", (7,), None)
    for key, value in ids.items():
        setattr(record, key, value)
    return record


def test_json_lines_carry_the_ids():
    line = json.loads(JsonFormatter().format(_record(job=3, op="train", attempt=7, node=2)))
    assert line["message"] == "running attempt 7" and line["level"] == "info"
    assert (line["job"], line["op"], line["attempt"], line["node"]) == (3, "train", 7, 2)


def test_text_lines_end_with_the_ids_they_have():
    assert TextFormatter().format(_record(job=3, attempt=7)).endswith("running attempt 7 [job=3 attempt=7]")
    assert not TextFormatter().format(_record()).endswith("]")
