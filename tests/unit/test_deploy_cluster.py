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
    serve = [c for c in config["head_start_ray_commands"] if c.startswith("serve deploy")]
    assert serve == ["serve deploy /home/ray/c2pg/serve_app/serve_config.yaml"]
    assert (ROOT / "serve_app" / "serve_config.yaml").exists()
    assert config["setup_commands"]
    for local in config["file_mounts"].values():
        assert (ROOT / local).exists(), local
    options = " ".join(config["docker"]["run_options"])
    assert "C2PG_PIPELINE_CONFIG=/home/ray/pipeline.yaml" in options
    assert "/etc/c2pg/secrets:ro" in options  # kuberay/pipeline.yaml reads its secrets there
    # One Ray token for all nodes, from a file the hosts fetch like the other secrets.
    assert "RAY_AUTH_MODE=token" in options and "RAY_AUTH_TOKEN_PATH=/etc/c2pg/secrets/ray-auth-token" in options
    assert "ray-auth-token" in " ".join(config["initialization_commands"])
    assert "/home/ray/pipeline.yaml" in config["file_mounts"]
