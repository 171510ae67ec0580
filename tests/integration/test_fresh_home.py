"""A newcomer's machine: nothing in the home directory, and the stack still works.

The stack's Ray head requires a token. It used to live in ``~/.ray/auth_token``, which the
machines the project was built on happened to have and a fresh machine lacks. These tests
run clients as a newcomer would — a process with an empty ``HOME`` and none of Ray's
variables set — and check that they reach the stack's Ray with the token the stack keeps
in ``.stack/secrets/``, and that nothing is written into that home.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def newcomer_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment less anything Ray- or token-related, with ``home`` as HOME
    and Ray's temporary root beside it (``ray-tmp``, a short path: Ray's sockets live there
    and a Unix socket path may not exceed 107 bytes)."""
    env = {k: val for k, val in os.environ.items()
           if not k.startswith("RAY_") and k not in ("VAULT_TOKEN", "PYTEST_CURRENT_TEST")}
    env.update(HOME=str(home), RAY_TMPDIR=str((home.parent / "ray-tmp").resolve()), **extra)
    return env


def run(argv: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{argv[:3]} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture
def empty_home() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="c2pg-nh-", dir="/tmp"))
    (base / "home").mkdir()
    (base / "ray-tmp").mkdir()
    yield base / "home"
    shutil.rmtree(base, ignore_errors=True)


def test_the_stack_keeps_its_ray_token_in_the_stack_directory(stack):
    ray = stack.services["ray"]
    token = ray.token_path
    assert token.parent == stack.paths.secrets
    assert token.stat().st_mode & 0o077 == 0, "the token file must be private to its owner"
    assert len(token.read_text().strip()) == 64  # 256 bits as hex, like `ray get-auth-token --generate`
    head_pid = json.loads(stack.state_file.read_text())["ray"]["pid"]
    environ = dict(item.split("=", 1) for item in
                   Path(f"/proc/{head_pid}/environ").read_text().split("\0") if "=" in item)
    assert environ["RAY_AUTH_TOKEN_PATH"] == str(token)
    assert environ["HOME"] != os.path.expanduser("~"), "servers get their data directory as HOME"


def test_stack_env_gives_a_shell_everything_ray_job_submit_needs(stack, empty_home):
    env = newcomer_env(empty_home)
    exports = run([str(BIN / "c2pg"), "stack", "env"], env).stdout
    shell = dict(line.removeprefix("export ").split("=", 1) for line in exports.splitlines()
                 if line.startswith("export "))
    assert shell["RAY_AUTH_TOKEN_PATH"] == str(stack.services["ray"].token_path)
    env.update(shell)
    out = run([str(BIN / "ray"), "job", "submit", "--address", shell["RAY_API_SERVER_ADDRESS"], "--",
               "python", "-c", "import ray; ray.init(); print('nodes', len(ray.nodes()))"], env).stdout
    assert "nodes 1" in out
    assert list(empty_home.iterdir()) == []


def test_a_driver_with_an_empty_home_and_no_ray_settings_reaches_the_stack(stack, empty_home):
    """What `python -m jobs.…` and `c2pg sync …` do: import engine, then join Ray."""
    code = ("import engine, ray\n"
            "from engine.ray_connect import ensure_ray\n"
            "address = ensure_ray()\n"
            "print(address, ray.get(ray.remote(lambda: 41 + 1).remote()))\n")
    out = run([sys.executable, "-c", code], newcomer_env(empty_home)).stdout
    # The last line: Ray may forward its raylet's warnings (e.g. many worker processes
    # started by other jobs) to this driver's stdout before it.
    assert out.strip().splitlines()[-1].split() == [stack.services["ray"].gcs_address, "42"]
    assert list(empty_home.iterdir()) == []


def test_a_private_ray_instance_gets_a_token_of_its_own_not_one_in_home(empty_home):
    """No stack needed: c2pg's fallback, a Ray instance for one process (ray_connect step 4)."""
    code = ("import os, ray\n"
            "from engine import ray_connect\n"
            "ray_connect._private_token()\n"
            "ray.init(address='local', num_cpus=1, include_dashboard=False)\n"
            "print(ray.get(ray.remote(lambda: 'ok').remote()), os.environ['RAY_AUTH_TOKEN_PATH'])\n"
            "ray.shutdown()\n")
    env = newcomer_env(empty_home, C2PG_STACK_DIR=str(empty_home.parent / "no-stack"))
    out = run([sys.executable, "-c", code], env).stdout.strip().splitlines()[-1].split()
    assert out[0] == "ok" and not out[1].startswith(str(empty_home))
    assert not (empty_home / ".ray").exists()
