"""The `peergrid` command as users and scripts call it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import factories
from tests.stack import Stack
from tests.test_jobdef import EXAMPLES


def peergrid(*args: str, env: dict, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True, input=input, timeout=120
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory, sqlite_template, docker_client):
    from docker.errors import ImageNotFound

    from tests.conftest import TEST_IMAGE

    try:
        docker_client.images.get(TEST_IMAGE)
    except ImageNotFound:
        pytest.fail(f"the test image {TEST_IMAGE} is missing")
    root = tmp_path_factory.mktemp("cli")
    db = root / "store.sqlite"
    db.write_bytes(sqlite_template.read_bytes())
    stack = Stack(root, database_url=f"sqlite:///{db}", broker_url=f"sqla+sqlite:///{root / 'broker.sqlite'}")
    try:
        stack.start_web()
        stack.start_scheduler()  # as `peergrid up` runs it: offers that go astray are made again
        yield stack
    finally:
        stack.stop()


@pytest.fixture(autouse=True)
def _logs_on_failure(request, stack):
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(stack.logs())


@pytest.fixture(scope="module")
def user_env(stack):
    env = {**stack.env, "PEERGRID_SERVER": stack.url}
    made = peergrid("admin", "create-user", "cli@example.com", "--password", "long enough pw", env=env)
    assert made.returncode == 0, made.stderr
    token = peergrid("admin", "create-token", "cli@example.com", env=env)
    assert token.returncode == 0, token.stderr
    return {**env, "PEERGRID_TOKEN": token.stdout.strip()}


def test_create_token_prints_the_token_and_nothing_else(user_env):
    assert user_env["PEERGRID_TOKEN"].startswith("pg_")
    assert "\n" not in user_env["PEERGRID_TOKEN"]


def test_create_user_refuses_a_duplicate_with_a_sentence(stack, user_env):
    again = peergrid("admin", "create-user", "cli@example.com", "--password", "long enough pw", env=user_env)
    assert again.returncode == 1
    assert "already exists" in again.stderr and "Traceback" not in again.stderr


def test_create_user_reads_a_piped_password_from_stdin(stack):
    from scheduler.accounts import authenticate

    made = peergrid("admin", "create-user", "piped@example.com", env=stack.env, input="a fine password\n")
    assert made.returncode == 0, made.stderr
    assert "Created account piped@example.com" in made.stdout
    assert "Warning" not in made.stderr  # no prompt, no echo warning
    with stack.core.transaction() as session:
        assert authenticate(session, "piped@example.com", "a fine password").email == "piped@example.com"
    empty = peergrid("admin", "create-user", "nothing@example.com", env=stack.env, input="")
    assert empty.returncode == 1 and "password" in empty.stderr.lower()


def test_create_token_for_an_unknown_account_says_what_to_do(stack):
    result = peergrid("admin", "create-token", "ghost@example.com", env=stack.env)
    assert result.returncode == 1
    assert "peergrid admin create-user ghost@example.com" in result.stderr


def test_node_create_prints_the_node_token_only(user_env):
    result = peergrid("node", "create", "my-rig", env=user_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pgn_") and result.stdout.count("\n") == 1


def test_join_tokens_are_made_listed_and_revoked_from_the_command_line(stack, user_env):
    import requests

    made = peergrid("node", "join-token", "--name", "cli rack", env=user_env)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("pgj_") and made.stdout.count("\n") == 1
    token = made.stdout.strip()
    joined = requests.post(f"{stack.url}/api/v1/nodes/join", json={"name": "cli-joined"},
                           headers=factories.bearer(token), timeout=10)
    assert joined.status_code == 201, joined.text

    listed = peergrid("node", "join-tokens", env=user_env)
    line = next(l for l in listed.stdout.splitlines() if "cli rack" in l)
    assert "1 node(s)" in line and "active" in line and token not in listed.stdout
    token_id = line.split()[0]
    revoked = peergrid("node", "revoke-join-token", token_id, env=user_env)
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in peergrid("node", "join-tokens", env=user_env).stdout
    unknown = peergrid("node", "revoke-join-token", "999999", env=user_env)
    assert unknown.returncode == 1 and "There is no join token 999999 of yours." in unknown.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_validate_accepts_every_nosana_example(path, tmp_path):
    result = peergrid("job", "validate", str(path), env=dict(os.environ))
    assert result.returncode == 0, result.stdout + result.stderr


def test_validate_prints_one_line_per_problem(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": "0.1", "ops": [{"id": "a", "type": "container/run", "args": {"cmd": 1}}]}))
    result = peergrid("job", "validate", str(bad), env=dict(os.environ))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        '$.ops[0].args.image: Missing: the container image to run, like "ubuntu:24.04".',
        "$.ops[0].args.cmd: cmd must be a string or a list of strings.",
    ]
    as_json = json.loads(peergrid("job", "validate", str(bad), "--json", env=dict(os.environ)).stdout)
    assert as_json["valid"] is False and len(as_json["errors"]) == 2


def test_validate_without_a_server_says_it_could_not_plan(tmp_path):
    job = tmp_path / "hello.json"
    job.write_text(json.dumps(factories.hello_world("busybox")))
    env = {k: v for k, v in os.environ.items() if k != "PEERGRID_TOKEN"}
    result = peergrid("job", "validate", str(job), env=env)
    assert result.returncode == 0 and "Could not plan it without a server" in result.stderr


def test_validate_with_a_token_plans_on_the_server_as_submit_would(user_env, tmp_path):
    job = tmp_path / "hello.json"
    job.write_text(json.dumps(factories.hello_world("busybox")))
    planned = peergrid("job", "validate", str(job), env=user_env)
    assert planned.returncode == 0, planned.stderr
    assert "hello-world (market cpu, at most" in planned.stdout and "available" in planned.stdout
    as_json = json.loads(peergrid("job", "validate", str(job), "--json", env=user_env).stdout)
    assert as_json["valid"] and as_json["ops"][0]["market"] == "cpu" and as_json["max_cost"] > 0
    huge = factories.hello_world("busybox")
    huge["ops"][0]["args"]["gpu_count"] = 1000
    job.write_text(json.dumps(huge))
    refused = peergrid("job", "validate", str(job), env=user_env)
    assert refused.returncode == 1 and refused.stdout.startswith("$.ops[0]: No market serves"), refused.stdout


def test_validate_reports_a_file_that_is_not_json(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{ nope")
    result = peergrid("job", "validate", str(bad), env=dict(os.environ))
    assert result.returncode == 1 and "is not valid JSON" in result.stderr


def test_validate_reports_a_file_nested_too_deep_to_read(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    result = peergrid("job", "validate", str(deep), env=dict(os.environ))
    assert result.returncode == 1 and "nests deeper" in result.stderr and "Traceback" not in result.stderr


def test_submit_wait_status_and_logs(stack, user_env, tmp_path, test_image):
    _, node_token, _ = factories.node(stack.core)
    stack.start_worker(node_token, name="cli-worker")
    job = tmp_path / "hello.json"
    job.write_text(json.dumps(factories.hello_world(test_image)))

    try:
        submitted = peergrid("job", "submit", str(job), "--wait", env=user_env)
    except subprocess.TimeoutExpired:
        raise AssertionError("the job did not finish:\n" + stack.logs()) from None
    assert submitted.returncode == 0, submitted.stderr + stack.logs()
    job_id = submitted.stdout.strip()
    assert job_id.isdigit()

    status = peergrid("job", "status", job_id, env=user_env)
    assert status.returncode == 0
    assert f"job {job_id}: succeeded" in status.stdout and "hello-world: succeeded exit 0" in status.stdout
    as_json = json.loads(peergrid("job", "status", job_id, "--json", env=user_env).stdout)
    assert as_json["state"] == "succeeded" and as_json["ops"][0]["exit_code"] == 0

    logs = peergrid("job", "logs", job_id, env=user_env)
    assert logs.stdout == "[hello-world] hello world\n"
    assert peergrid("job", "logs", job_id, "--op", "hello-world", env=user_env).stdout == "hello world\n"

    with_results = tmp_path / "results.json"
    doc = factories.hello_world(test_image, cmd="echo answer=42")
    doc["ops"][0]["results"] = {"answer": "(?<=answer=)\\d+"}
    with_results.write_text(json.dumps(doc))
    answered = peergrid("job", "submit", str(with_results), "--wait", env=user_env)
    assert answered.returncode == 0, answered.stderr
    shown = peergrid("job", "status", answered.stdout.strip(), env=user_env)
    assert "answer = ['42']" in shown.stdout

    output_job = tmp_path / "output.json"
    output_job.write_text(json.dumps(factories.hello_world(test_image, cmd="echo kept > /out/f.txt")))
    doc = json.loads(output_job.read_text())
    doc["ops"][0]["args"]["output"] = "/out"
    output_job.write_text(json.dumps(doc))
    made = peergrid("job", "submit", str(output_job), "--wait", env=user_env)
    assert made.returncode == 0, made.stderr
    target = tmp_path / "got.tar.gz"
    fetched = peergrid("job", "download", made.stdout.strip(), "hello-world", "-o", str(target), env=user_env)
    assert fetched.returncode == 0, fetched.stderr
    import tarfile

    with tarfile.open(target) as tar:
        assert tar.extractfile("out/f.txt").read() == b"kept\n"
    # To stdout, for a pipe: the archive's bytes and nothing else.
    piped = subprocess.run([sys.executable, "-m", "cli", "job", "download", made.stdout.strip(), "hello-world", "-o", "-"],
                           env=user_env, capture_output=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == target.read_bytes()
    waited = peergrid("job", "wait", made.stdout.strip(), env=user_env)
    assert waited.returncode == 0 and waited.stdout == f"job {made.stdout.strip()} succeeded\n"
    missing = peergrid("job", "download", job_id, "hello-world", env=user_env)
    assert missing.returncode == 1 and "has no output" in missing.stderr

    failing = tmp_path / "fail.json"
    failing.write_text(json.dumps(factories.hello_world(test_image, cmd="exit 2")))
    failed = peergrid("job", "submit", str(failing), "--wait", env=user_env)
    assert failed.returncode == 1 and "failed" in failed.stderr
    waited = peergrid("job", "wait", failed.stdout.strip(), env=user_env)
    assert waited.returncode == 1 and "failed" in waited.stdout


def test_submit_of_a_bad_definition_prints_the_problems(user_env, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": "0.1", "ops": []}))
    result = peergrid("job", "submit", str(bad), env=user_env)
    assert result.returncode == 1
    assert result.stderr.strip() == "$.ops: The job has no ops: add at least one."


def test_client_commands_say_what_to_do_without_a_token_or_server(user_env):
    no_token = {k: v for k, v in user_env.items() if k != "PEERGRID_TOKEN"}
    result = peergrid("job", "status", "1", env=no_token)
    assert result.returncode == 1 and "PEERGRID_TOKEN" in result.stderr
    down = {**user_env, "PEERGRID_SERVER": "http://127.0.0.1:9"}
    result = peergrid("job", "status", "1", env=down)
    assert result.returncode == 1 and "Cannot reach the server" in result.stderr


def test_db_upgrade_migrates_an_empty_store(tmp_path):
    env = {**os.environ, "PEERGRID_DATA_DIR": str(tmp_path)}
    result = peergrid("db", "upgrade", env=env)
    assert result.returncode == 0, result.stderr
    assert (Path(tmp_path) / "peergrid.sqlite").exists()
    assert "up to date" in result.stdout


def test_admins_manage_markets_from_the_command_line(stack):
    made = peergrid("admin", "market", "create", "h100", "--name", "H100s", "--gpus", "1", "--min-vram-gb", "80",
                    "--models", "NVIDIA H100 80GB HBM3", "--min-cuda", "12.2", "--price", "2000", "--fee-percent", "7.5",
                    env=stack.env)
    assert made.returncode == 0, made.stderr
    assert peergrid("admin", "market", "update", "h100", "--price", "1800", env=stack.env).returncode == 0
    listed = peergrid("admin", "market", "list", env=stack.env).stdout
    line = next(l for l in listed.splitlines() if l.startswith("h100"))
    assert "1 GPU ≥ 80 GB (NVIDIA H100 80GB HBM3)" in line and "1800" in line and "fee 7.5%" in line
    again = peergrid("admin", "market", "create", "h100", env=stack.env)
    assert again.returncode == 1 and "already" in again.stderr


def test_providers_list_and_drain_their_nodes(stack, user_env):
    peergrid("node", "create", "drain-me", env=user_env)
    listed = peergrid("node", "list", env=user_env)
    assert "drain-me" in listed.stdout and "offline" in listed.stdout
    drained = peergrid("node", "drain", "drain-me", env=user_env)
    assert drained.returncode == 0
    assert drained.stdout.strip() == "node drain-me: offline (it drains when it comes back)"
    assert peergrid("node", "drain", "no-such-node", env=user_env).returncode == 1


def test_grant_check_books_balance_and_payouts(stack, user_env):
    granted = peergrid("admin", "grant", "cli@example.com", "2.5", "--memo", "top-up", env=stack.env)
    assert granted.returncode == 0 and "Granted 2.5 credits" in granted.stdout
    bad = peergrid("admin", "grant", "cli@example.com", "1.0000001", env=stack.env)
    assert bad.returncode == 1 and "six decimals" in bad.stderr
    books = peergrid("admin", "check-books", env=stack.env)
    assert books.returncode == 0 and "The books balance." in books.stdout and "issued" in books.stdout
    shown = peergrid("balance", env=user_env)
    assert shown.returncode == 0 and "available" in shown.stdout
    refused = peergrid("payout", "request", "5", env=user_env)
    assert refused.returncode == 1 and "short by" in refused.stderr

    import sqlite3

    store = sqlite3.connect(stack.settings.database_url.removeprefix("sqlite:///"))
    store.execute("UPDATE accounts SET balance = balance + 7 WHERE kind = 'available'")
    store.commit()
    broken = peergrid("admin", "check-books", env=stack.env)
    assert broken.returncode == 1 and "UNBALANCED" in broken.stderr
    store.execute("UPDATE accounts SET balance = balance - 7 WHERE kind = 'available'")
    store.commit()
    assert peergrid("admin", "check-books", env=stack.env).returncode == 0


def test_secrets_are_set_from_stdin_listed_by_name_and_deleted(stack, user_env):
    from scheduler.accounts import find_user
    from scheduler.secrets import values_of

    value = "cli-secret-7f3a9c0e"
    stored = peergrid("secret", "set", "HF_TOKEN", env=user_env, input=value + "\n")
    on_argv = peergrid("secret", "set", "HF_TOKEN", value, env=user_env)
    bad_name = peergrid("secret", "set", "hf-token", env=user_env, input=value)
    listed = peergrid("secret", "list", env=user_env)
    as_json = peergrid("secret", "list", "--json", env=user_env)

    assert stored.returncode == 0, stored.stderr
    assert "%%secrets.HF_TOKEN%%" in stored.stdout
    assert on_argv.returncode == 2  # a value on the command line would stay in the shell's history
    assert bad_name.returncode == 1 and "capital letters" in bad_name.stderr
    assert listed.stdout.split()[0] == "HF_TOKEN"
    assert [s["name"] for s in json.loads(as_json.stdout)] == ["HF_TOKEN"]
    assert all(value not in run.stdout + run.stderr for run in (stored, listed, as_json))
    with stack.core.transaction() as session:
        assert values_of(session, find_user(session, "cli@example.com").id) == {"HF_TOKEN": value}

    deleted = peergrid("secret", "delete", "HF_TOKEN", env=user_env)
    again = peergrid("secret", "delete", "HF_TOKEN", env=user_env)
    assert deleted.returncode == 0 and "deleted" in deleted.stdout
    assert again.returncode == 1 and "You have no secret HF_TOKEN." in again.stderr
    assert "No secrets yet" in peergrid("secret", "list", env=user_env).stdout
