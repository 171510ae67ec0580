"""Secret resolution against the stack's real OpenBao (KV v2 at ``secret/``, AppRole ``c2pg``).

The example pipeline logs in with the AppRole ids the stack leaves in ``.stack/secrets``;
the other tests switch settings with ``C2PG__...`` overrides passed as ``env``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import psycopg2
import pytest

from engine.config import load_config
from engine.errors import ConfigError


def problems_of(path: Path, env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    return info.value.problems


@pytest.fixture(scope="module")
def root_token(stack) -> str:
    return stack.services["vault"].root_token


@pytest.fixture(scope="module")
def token_env(root_token: str) -> dict[str, str]:
    """Overrides that switch the example pipeline from AppRole to token auth."""
    return {"C2PG__VAULT__AUTH": "token", "C2PG__VAULT__TOKEN": "env:VAULT_TOKEN",
            "VAULT_TOKEN": root_token}


def test_approle_password_connects_to_postgres(pipeline):
    assert pipeline.postgres.password.resolved
    assert pipeline.api.token is not None and pipeline.api.token.resolved
    with psycopg2.connect(**pipeline.postgres.connect_kwargs()) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    conn.close()


def test_resolved_config_is_picklable_and_masked(pipeline):
    copy = pickle.loads(pickle.dumps(pipeline))
    assert copy.postgres.password.get() == pipeline.postgres.password.get()
    masked = pipeline.masked_yaml()
    assert pipeline.postgres.password.get() not in masked
    assert pipeline.api.token.get() not in masked
    assert "vault:c2pg/local#postgres_password (resolved: ****)" in masked


def test_token_auth_with_root_token(example_pipeline_path, token_env, pipeline):
    cfg = load_config(example_pipeline_path, env=token_env)
    assert cfg.vault is not None and cfg.vault.auth == "token"
    assert cfg.postgres.password.get() == pipeline.postgres.password.get()
    assert not cfg.vault.role_id.resolved  # not used by token auth, so not read


def test_token_file_reference(example_pipeline_path, stack):
    token_file = stack.paths.root / "secrets" / "vault-root-token"
    env = {"C2PG__VAULT__AUTH": "token", "C2PG__VAULT__TOKEN": f"file:{token_file}"}
    assert load_config(example_pipeline_path, env=env).postgres.password.resolved


def test_missing_key_names_the_setting(example_pipeline_path):
    env = {"C2PG__POSTGRES__PASSWORD": "vault:c2pg/local#pw"}
    [problem] = problems_of(example_pipeline_path, env)
    assert problem.startswith("postgres.password: vault secret c2pg/local has no key 'pw'")
    assert "postgres_password" in problem  # lists the keys it has, never their values


def test_missing_path_names_the_setting(example_pipeline_path):
    env = {"C2PG__API__TOKEN": "vault:c2pg/absent#token"}
    assert problems_of(example_pipeline_path, env) == [
        "api.token: vault secret c2pg/absent does not exist (KV v2 mount 'secret')"]


def test_path_outside_the_approle_policy(example_pipeline_path):
    env = {"C2PG__API__TOKEN": "vault:other/app#token"}
    [problem] = problems_of(example_pipeline_path, env)
    assert problem.startswith("api.token: permission denied reading vault secret other/app")


def test_unreachable_vault_names_vault_url(example_pipeline_path):
    env = {"C2PG__VAULT__URL": "http://127.0.0.1:1", "C2PG__VAULT__TIMEOUT": "2s"}
    [problem] = problems_of(example_pipeline_path, env)
    assert problem.startswith("vault.url: cannot reach Vault at http://127.0.0.1:1: ")
    assert "ConnectionRefusedError" in problem


def test_wrong_secret_id(example_pipeline_path, tmp_path: Path):
    bad = tmp_path / "secret-id"
    bad.write_text("00000000-0000-0000-0000-000000000000\n")
    env = {"C2PG__VAULT__SECRET_ID": f"file:{bad}"}
    [problem] = problems_of(example_pipeline_path, env)
    assert problem.startswith("vault.secret_id: Vault at http://127.0.0.1:8200 rejected the "
                              "AppRole login (role_id or secret_id wrong")


def test_wrong_token(example_pipeline_path, token_env):
    [problem] = problems_of(example_pipeline_path, {**token_env, "VAULT_TOKEN": "not-a-token"})
    assert problem.startswith("vault.token: Vault at http://127.0.0.1:8200 rejected the token")


def test_vault_and_other_problems_are_reported_together(example_pipeline_path):
    env = {"C2PG__POSTGRES__PASSWORD": "vault:c2pg/local#pw", "C2PG__API__TOKEN": "env:NO_SUCH_VAR",
           "C2PG__SYNC__WORKERS": "0"}
    assert problems_of(example_pipeline_path, env) == [
        "sync.workers: Input should be greater than 0 (set by C2PG__SYNC__WORKERS)",
        "postgres.password: vault secret c2pg/local has no key 'pw' "
        "(it has: api_token, postgres_password, postgres_user)",
        "api.token: environment variable NO_SUCH_VAR is not set"]


def test_one_read_per_vault_path(example_pipeline_path, monkeypatch):
    """postgres.password and api.token share c2pg/local: one round trip for both."""
    from engine.secrets import SecretResolver

    fetched: list[str] = []
    original = SecretResolver._fetch

    def counting(self, path):
        fetched.append(path)
        return original(self, path)

    monkeypatch.setattr(SecretResolver, "_fetch", counting)
    cfg = load_config(example_pipeline_path, env={})
    assert cfg.postgres.password.resolved and cfg.api.token.resolved
    assert sorted(fetched) == ["c2pg/local", "c2pg/logins"]  # logins: cassandra.password
