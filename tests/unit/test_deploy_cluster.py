"""cluster.yaml (the Ray cluster launcher's AWS example) against Ray's own cluster schema.

``ray up`` fills in the provider's defaults (``prepare_config``) and then validates against
``ray/autoscaler/ray-schema.json`` (``validate_config``); the test runs the same two steps
from the installed ray package, without any cloud call.
"""

from __future__ import annotations

import copy

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.unit.deploy_validation import ROOT

CLUSTER = ROOT / "cluster.yaml"


def load() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def check(config: dict) -> None:
    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_passes_rays_own_validation():
    check(load())


@pytest.mark.parametrize("mistake", [
    lambda c: c.update(max_workerz=8),                                      # unknown key
    lambda c: c["available_node_types"]["sync_worker"].update(min_workers="one"),
    lambda c: c.update(head_node_type="nope"),                              # not a node type
    lambda c: c["available_node_types"]["sync_worker"].update(min_workers=20),  # above max_workers
    lambda c: c["docker"].pop("image"),                                     # docker without image
])
def test_a_broken_cluster_yaml_fails_validation(mistake):
    config = load()
    mistake(config)
    # What `ray up` raises: the schema's ValidationError, or Ray's own ValueError/AssertionError.
    with pytest.raises((jsonschema.ValidationError, ValueError, AssertionError)):
        check(config)


def test_head_runs_no_work_and_sync_workers_autoscale():
    config = load()
    types = config["available_node_types"]
    assert config["head_node_type"] == "head" and set(types) == {"head", "sync_worker"}
    assert types["head"]["resources"] == {"CPU": 0}
    worker = types["sync_worker"]
    assert 1 <= worker["min_workers"] < worker["max_workers"] <= config["max_workers"]


def test_nodes_run_the_engine_image_and_start_ray_and_serve():
    config = load()
    assert config["docker"]["image"].startswith("c2pg/engine:")
    assert any(cmd.startswith("ulimit -n 65536; ray start --head") for cmd in config["head_start_ray_commands"])
    assert any("--autoscaling-config=~/ray_bootstrap_config.yaml" in c for c in config["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])
    serve = [c for c in config["head_start_ray_commands"] if "serve deploy" in c]
    assert len(serve) == 1 and "serve deploy /home/ray/c2pg/serve_app/serve_config.yaml" in serve[0]
    assert (ROOT / "serve_app" / "serve_config.yaml").exists()
    assert config["setup_commands"]
    for local in config["file_mounts"].values():
        assert (ROOT / local).exists(), local
    options = " ".join(config["docker"]["run_options"])
    assert "C2PG_PIPELINE_CONFIG=/home/ray/pipeline.yaml" in options
    assert "/etc/c2pg/secrets:ro" in options  # kuberay/pipeline.yaml reads its secrets there
    # One Ray token for all nodes, from a file the hosts fetch like the other secrets.
    token_path = "RAY_AUTH_TOKEN_PATH=/etc/c2pg/secrets/ray-auth-token"  # pragma: allowlist secret - a path
    assert "RAY_AUTH_MODE=token" in options and token_path in options
    assert "ray-auth-token" in " ".join(config["initialization_commands"])
    assert "/home/ray/pipeline.yaml" in config["file_mounts"]


# --- does the launched cluster work? -------------------------------------------------------------


def _head_container_env() -> dict[str, str]:
    """The head container's environment from `docker run` options (run_options, then
    head_run_options, as Ray's DockerCommandRunner joins them)."""
    docker = load()["docker"]
    env: dict[str, str] = {}
    for option in docker.get("run_options", []) + docker.get("head_run_options", []):
        if option.startswith("--env "):
            key, _, value = option.removeprefix("--env ").partition("=")
            env[key] = value
    return env


def test_ray_exec_sync_start_finds_the_head(monkeypatch):
    """`ray exec cluster.yaml 'c2pg sync start ...'` runs in the head's container, where
    engine/ray_connect must find the head's GCS rather than raise NoRayCluster."""
    import re

    from engine import ray_connect

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for key, value in _head_container_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(ray_connect, "_answers", lambda *a, **k: False)
    host, _, port = ray_connect.choose_address(persistent=True).rpartition(":")
    (head_port,) = {int(p) for c in load()["head_start_ray_commands"]
                    for p in re.findall(r"ray start --head.*?--port=(\d+)", c)}
    assert host in ("127.0.0.1", "localhost") and int(port) == head_port


def test_the_mounted_pipeline_file_is_not_the_kubernetes_one():
    """The launcher's VMs resolve no `*.svc.cluster.local` name; its pipeline file is its own,
    valid, and reads exactly the secret files initialization_commands fetch."""
    import re

    from engine.config import load_config

    config = load()
    target = config["docker"]["run_options"]
    local = config["file_mounts"]["/home/ray/pipeline.yaml"]
    assert "kuberay/" not in local
    text = (ROOT / local).read_text()
    assert ".svc.cluster.local" not in text and ".svc" not in re.sub(r"#.*", "", text)
    cfg = load_config(ROOT / local, resolve_secrets=False)
    files = {s.ref.target for _, s in cfg.secrets()}
    assert all(s.ref.kind == "file" for _, s in cfg.secrets())
    mount = next(o for o in target if o.startswith("--volume ") and o.endswith(":/etc/c2pg/secrets:ro"))
    assert mount
    fetched = set(re.findall(r"for key in ([a-z\- ]+?); do", " ".join(config["initialization_commands"]))[0].split())
    assert {f.removeprefix("/etc/c2pg/secrets/") for f in files} <= fetched
    assert all(f.startswith("/etc/c2pg/secrets/") for f in files)


IAM = ROOT / "cluster.iam.json"


def _autoscaler_ec2_actions() -> set[str]:
    """The EC2 API calls Ray's AWS node provider makes from the head (read from the installed
    ray package), as IAM actions."""
    import re
    from pathlib import Path

    import ray

    # Read, not imported: importing it needs boto3, which c2pg does not install.
    source = (Path(ray.__file__).parent / "autoscaler/_private/aws/node_provider.py").read_text()
    actions = set()
    for method in re.findall(r"\.(describe_[a-z_]+|create_[a-z_]+|start_instances|stop_instances|"
                             r"terminate_instances)\(", source):
        name = {"create_instances": "RunInstances"}.get(method) or "".join(
            p.capitalize() for p in method.split("_"))
        actions.add(f"ec2:{name}")
    if "instances.filter(" in source:
        actions.add("ec2:DescribeInstances")
    if ".terminate()" in source:
        actions.add("ec2:TerminateInstances")
    if ".stop()" in source:
        actions.add("ec2:StopInstances")
    return actions


def _allowed(policy: dict, action: str, resource: str = "*") -> bool:
    import fnmatch

    for stmt in policy["Statement"]:
        actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
        resources = stmt["Resource"] if isinstance(stmt["Resource"], list) else [stmt["Resource"]]
        if stmt["Effect"] == "Allow" and any(fnmatch.fnmatchcase(action, a) for a in actions) \
                and any(fnmatch.fnmatchcase(resource, r) for r in resources):
            return True
    return False


def test_head_instance_profile_grants_what_rays_autoscaler_calls():
    """With a custom IamInstanceProfile Ray creates no role: the head's must allow every EC2
    call the autoscaler makes, and iam:PassRole for the workers' role (RunInstances with an
    instance profile); the workers' must not be able to start or stop instances."""
    import json

    iam = json.loads(IAM.read_text())
    types = load()["available_node_types"]
    head_profile = types["head"]["node_config"]["IamInstanceProfile"]["Name"]
    worker_profile = types["sync_worker"]["node_config"]["IamInstanceProfile"]["Name"]
    assert head_profile != worker_profile
    head, worker = iam["profiles"][head_profile], iam["profiles"][worker_profile]
    needed = _autoscaler_ec2_actions()
    assert {"ec2:RunInstances", "ec2:TerminateInstances", "ec2:DescribeInstances", "ec2:CreateTags"} <= needed
    missing = {a for a in needed if not _allowed(head["policy"], a)}
    assert not missing, missing
    assert _allowed(head["policy"], "iam:PassRole", f"arn:aws:iam::123456789012:role/{worker['role']}")
    assert not any(_allowed(worker["policy"], a) for a in needed | {"iam:PassRole"})
    for profile in (head, worker):  # both fetch the secrets in initialization_commands
        parameter = "arn:aws:ssm:eu-west-1:123456789012:parameter/c2pg/prod/postgres-password"
        assert _allowed(profile["policy"], "ssm:GetParameter", parameter)


def test_initialization_commands_can_run_again():
    """`ray up` runs initialization_commands on every run: refreshing secrets that the first
    run made read-only must work (run twice here, as an unprivileged user, with a stand-in aws)."""
    import shutil
    import tempfile
    from pathlib import Path

    # Not pytest's tmp_path: its parents are closed to the unprivileged user.
    tmp_path = Path(tempfile.mkdtemp(prefix="c2pg-init-"))
    try:
        _run_initialization_twice(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _run_initialization_twice(tmp_path) -> None:
    import os
    import shutil
    import subprocess

    home = tmp_path / "home"
    home.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {"aws": 'echo "secret-for-$5"',  # $5: the --name
             "sudo": 'exec "$@"', "chown": "exit 0"}
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    script = " && ".join(load()["initialization_commands"]).replace("/home/ubuntu", str(home))
    prefix: list[str] = []
    if os.geteuid() == 0:  # root ignores file modes: run as nobody, as the ubuntu user is not root
        setpriv = shutil.which("setpriv")
        if not setpriv:
            pytest.skip("running as root without setpriv")
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        for p in (tmp_path, home, bin_dir):
            p.chmod(0o777)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for run in (1, 2):
        proc = subprocess.run([*prefix, "bash", "-c", script], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, (run, proc.stderr)
    secret = home / "c2pg-secrets" / "postgres-password"
    assert secret.read_text().strip() == "secret-for-/c2pg/prod/postgres-password"
    assert oct(secret.stat().st_mode & 0o777) == "0o400"
    assert not [p for p in (home / "c2pg-secrets").iterdir() if not p.name.replace("-", "").isalnum()]


def test_head_start_waits_for_the_dashboard_before_serve_deploy(tmp_path):
    """`ray start --head` returns before the dashboard's REST API listens; `serve deploy`
    talks to it, and a refused first try must be retried, not fail `ray up`."""
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls, fails = tmp_path / "calls", tmp_path / "fails"
    fails.write_text("3")
    stubs = {"ray": 'echo "ray $*" >> "$CALLS"', "sleep": "exit 0",
             "serve": ('echo "serve $*" >> "$CALLS"; n=$(cat "$FAILS"); '
                       'if [ "$n" -gt 0 ]; then echo $((n-1)) > "$FAILS"; exit 1; fi')}
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls), "FAILS": str(fails)}
    # The launcher runs each command in its own shell and stops at the first that fails.
    for command in load()["head_start_ray_commands"]:
        if "serve deploy" not in command:
            continue
        proc = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    assert calls.read_text().count("serve deploy") == 4
