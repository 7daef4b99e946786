"""The Docker runtime against a real engine and a locally built image."""

from __future__ import annotations

import threading
import time

import pytest

from worker.runtime import DockerRuntime, container_spec


def run(image: str, spec: dict, **kwargs):
    lines: list[tuple[str, str]] = []
    outcome = DockerRuntime().run(
        container_spec({"image": image, **spec}, network="none"), lambda s, t: lines.append((s, t)), **kwargs
    )
    return outcome, lines


def test_a_list_cmd_runs_as_given(test_image):
    outcome, lines = run(test_image, {"cmd": ["echo", "hello", "world"]})
    assert (outcome.exit_code, outcome.error) == (0, None)
    assert lines == [("stdout", "hello world")]


def test_a_string_cmd_runs_in_a_shell_with_env_and_work_dir(test_image):
    outcome, lines = run(
        test_image,
        {"cmd": "echo $GREETING from $(pwd); echo oops >&2; exit 4", "env": {"GREETING": "hi"}, "work_dir": "/tmp"},
    )
    assert outcome.exit_code == 4
    assert ("stdout", "hi from /tmp") in lines and ("stderr", "oops") in lines


def test_an_entrypoint_receives_the_cmd(test_image):
    outcome, lines = run(test_image, {"entrypoint": ["/bin/sh", "-c"], "cmd": ["echo via entrypoint"]})
    assert outcome.exit_code == 0
    assert lines == [("stdout", "via entrypoint")]


def test_containers_have_no_network_when_told(test_image):
    outcome, lines = run(test_image, {"cmd": "ls /sys/class/net"})
    assert outcome.exit_code == 0
    assert [t for _, t in lines] == ["lo"]


def test_lines_arrive_while_the_container_runs(test_image):
    seen: list[tuple[float, str]] = []
    began = time.monotonic()
    spec = container_spec({"image": test_image, "cmd": "for i in 1 2 3; do echo line-$i; sleep 0.4; done"}, network="none")
    outcome = DockerRuntime().run(spec, lambda s, t: seen.append((time.monotonic() - began, t)))
    ended = time.monotonic() - began
    assert outcome.exit_code == 0
    assert [t for _, t in seen] == ["line-1", "line-2", "line-3"]
    assert seen[0][0] < ended - 0.6  # the first line came well before the end


def test_a_missing_image_fails_with_a_sentence(docker_client):
    outcome, lines = run("peergrid-test/no-such-image:never", {"cmd": ["true"]})
    assert outcome.exit_code is None
    assert "is not on this machine and could not be pulled" in outcome.error
    assert "Traceback" not in outcome.error


def test_a_missing_executable_fails_with_a_sentence(test_image):
    outcome, _ = run(test_image, {"cmd": ["/no/such/binary"]})
    assert outcome.exit_code is None or outcome.exit_code != 0
    assert outcome.error and "Traceback" not in outcome.error


def test_a_stopped_engine_fails_with_a_sentence_saying_what_to_do(tmp_path):
    runtime = DockerRuntime(f"unix://{tmp_path}/docker.sock")
    outcome = runtime.run(container_spec({"image": "x", "cmd": "true"}, network="none"), lambda s, t: None)
    assert outcome.exit_code is None
    assert "is not answering" in outcome.error and "Start it" in outcome.error
    assert "is not answering" in runtime.check()


def test_a_timeout_stops_the_container(test_image):
    began = time.monotonic()
    outcome, _ = run(test_image, {"cmd": "sleep 30"}, time_limit=lambda: 1, stop_grace_s=1)
    assert time.monotonic() - began < 10
    assert "timed out after 1 seconds" in outcome.error


def test_should_stop_stops_the_container(test_image):
    stop = threading.Event()
    threading.Timer(0.8, stop.set).start()
    began = time.monotonic()
    outcome, _ = run(test_image, {"cmd": "sleep 30"}, should_stop=stop.is_set, stop_grace_s=1)
    assert time.monotonic() - began < 10
    assert outcome.exit_code is not None and outcome.exit_code != 0


@pytest.mark.parametrize("cmd", [None, []])
def test_no_cmd_runs_the_images_default(test_image, cmd):
    outcome, _ = run(test_image, {"cmd": cmd} if cmd is not None else {})
    assert outcome.exit_code == 0  # busybox sh with no input exits at once


def test_the_output_folder_is_made_and_collected(test_image, tmp_path):
    import tarfile

    archive = tmp_path / "out.tar.gz"
    spec = container_spec({"image": test_image, "cmd": "echo test-output > /output/file.txt", "output": "/output"}, network="none")
    outcome = DockerRuntime().run(spec, lambda s, t: None, output_archive=archive)
    assert (outcome.exit_code, outcome.error, outcome.artifact) == (0, None, archive)
    with tarfile.open(archive) as tar:
        assert tar.extractfile("output/file.txt").read() == b"test-output\n"


def test_inputs_appear_under_inputs_op_id(test_image, tmp_path):
    import io
    import tarfile

    parent = tmp_path / "parent.tar.gz"
    with tarfile.open(parent, "w:gz") as tar:
        for name, data in (("out/a.txt", b"alpha\n"), ("out/sub/b.txt", b"beta\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    outcome, lines = run(test_image, {"cmd": "cat /inputs/make/a.txt /inputs/make/sub/b.txt"}, inputs={"make": parent})
    assert outcome.exit_code == 0, outcome.error
    assert [t for _, t in lines] == ["alpha", "beta"]


def test_an_op_whose_volume_is_gone_fails_rather_than_run_on_an_empty_one(test_image, docker_client):
    """Docker would make a missing named volume, empty and unlabelled, and run the op on it."""
    import uuid

    volume = {"name": f"gone-{uuid.uuid4().hex[:8]}", "dest": "/data"}
    spec = container_spec({"image": test_image, "cmd": "cat /data/note.txt", "volumes": [volume]}, network="none",
                          cluster="c0ffee", job_id=7)
    outcome = DockerRuntime().run(spec, lambda s, t: None)

    assert outcome.exit_code is None
    assert f"volume peergrid-c0ffee-7-{volume['name']} is no longer on this node" in outcome.error
    assert docker_client.volumes.list(filters={"name": volume["name"]}) == []


def test_containers_are_confined(test_image, docker_client):
    """No privilege, all but a few capabilities dropped, no new privileges, limits on processes and memory."""
    from worker.runtime import KEPT_CAPABILITIES, Limits

    spec = container_spec({"image": test_image, "cmd": "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; sleep 2"},
                          network="none", labels={"peergrid.test": "confined"}, limits=Limits(pids=64, memory_mb=256))
    lines: list[str] = []
    seen = {}

    def inspect_while_running():
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not seen:
            for container in docker_client.containers.list(filters={"label": "peergrid.test=confined"}):
                seen.update(container.attrs["HostConfig"])
            time.sleep(0.1)

    watcher = threading.Thread(target=inspect_while_running)
    watcher.start()
    outcome = DockerRuntime().run(spec, lambda s, t: lines.append(t))
    watcher.join()

    assert outcome.exit_code == 0, (outcome, lines)
    values = dict(line.split(":\t") for line in lines if ":\t" in line)
    capabilities = int(values["CapEff"], 16)
    assert capabilities & (1 << 21) == 0  # no CAP_SYS_ADMIN
    assert capabilities & (1 << 13) == 0  # no CAP_NET_RAW, which Docker grants by default
    assert bin(capabilities).count("1") == len(KEPT_CAPABILITIES)
    assert values["NoNewPrivs"].strip() == "1"
    assert seen["Privileged"] is False and seen["NetworkMode"] == "none"
    assert seen["CapDrop"] == ["ALL"] and seen["PidsLimit"] == 64 and seen["Memory"] == 256 * 1024 * 1024
    assert not seen.get("Binds") and "no-new-privileges" in seen["SecurityOpt"]


def test_a_worker_refuses_the_host_network():
    from worker.errors import WorkerError
    from worker.settings import WorkerSettings

    with pytest.raises(WorkerError, match="host's"):
        WorkerSettings(server="http://x", token="t", job_network="host")


def test_the_worker_reads_its_docker_engine_from_peergrid_docker_host_else_docker_host():
    from worker.settings import WorkerSettings

    def engine(env: dict) -> str | None:
        return WorkerSettings.from_env(env, server="http://x", token="t").docker_host

    assert engine({"PEERGRID_DOCKER_HOST": "tcp://gpu-box:2375", "DOCKER_HOST": "unix:///other.sock"}) == "tcp://gpu-box:2375"
    assert engine({"DOCKER_HOST": "unix:///other.sock"}) == "unix:///other.sock"
    assert engine({}) is None


def test_the_worker_keeps_its_state_where_told_and_says_when_it_cannot_read_it(tmp_path):
    from pathlib import Path

    from worker.errors import WorkerError
    from worker.images import PrivateImages
    from worker.settings import WorkerSettings

    told = WorkerSettings.from_env({"PEERGRID_WORKER_DATA_DIR": str(tmp_path)}, server="http://x", token="t")
    default = WorkerSettings.from_env({"XDG_STATE_HOME": "/state"}, server="http://x", token="t")
    kept = PrivateImages(tmp_path / "private-images.json")
    kept.pulled("registry.example.com/ann/app:1", "sha256:1")
    broken = tmp_path / "broken.json"
    broken.write_text("not json")

    assert told.data_dir == tmp_path and default.data_dir == Path("/state/peergrid-worker")
    assert PrivateImages(tmp_path / "private-images.json").ids(lambda ref: None) == {"sha256:1"}
    with pytest.raises(WorkerError, match="cannot be used") as refused:
        PrivateImages(broken)
    assert str(broken) in str(refused.value)


def test_the_offer_consumer_survives_an_unexpected_error():
    """A failure inside the broker client is logged and the consumer is made again, not fatal."""
    from kombu import Connection

    from worker.broker import consume_offers

    calls = {"n": 0}

    class Flaky(Connection):
        def drain_events(self, **kwargs):
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("UNIQUE constraint failed: kombu_queue.name")
            raise TimeoutError  # a quiet broker (socket.timeout)

    connection = Flaky("memory://")
    consume_offers(connection, lambda: ["market.cpu"], lambda body, message: None, can_take=lambda: True,
                   stopping=lambda: calls["n"] >= 3, idle_wait=lambda s: None)
    assert calls["n"] >= 3
