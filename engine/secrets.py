"""Secret references and their resolution: ``vault:PATH#KEY``, ``env:NAME``, ``file:PATH``.

The pipeline file never holds a secret in clear; a secret-typed setting holds a *reference*
(:class:`SecretRef`) and, once resolved, the value as a :class:`pydantic.SecretStr`, both in
one immutable :class:`Secret`. :mod:`engine.config` parses references while validating and,
in ``load_config``, resolves them all with one :class:`SecretResolver` (one Vault client per
load, each Vault path read once). Workers get the resolved config pickled; nothing here holds
a live client after the resolver is closed.

Failures are :class:`~engine.errors.SecretError` with a message that names the reference but
never a value; the config layer prefixes the setting's name and reports it as a problem.
:class:`VaultLoginError` (a ``SecretError``) is the one failure that is about Vault itself
rather than one secret; it carries the Vault setting at fault (``vault.url``, ``vault.token``
or ``vault.secret_id``) so it is reported once, against that setting.

hvac and requests exceptions are translated in :meth:`SecretResolver.connect_vault` and
:meth:`SecretResolver._fetch` only, by exception type, never by message text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import hvac
import hvac.exceptions as hv
import requests
from pydantic import SecretStr
from pydantic_core import PydanticCustomError, core_schema

from engine.errors import SecretError

SecretKind = Literal["vault", "env", "file"]
REF_HINT = "use vault:PATH#KEY, env:NAME or file:PATH"
CLEAR_TEXT_MESSAGE = f"secrets must not be written in clear in the file; {REF_HINT}"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SecretRefSyntaxError(ValueError):
    """A secret setting holds something that is not a well-formed reference.

    Raised by :func:`parse_ref`; the message never repeats the input (it may be a password
    written in clear). ``clear_text`` is true when the input does not even look like a
    reference, i.e. it is most likely the secret itself.
    """

    def __init__(self, message: str, *, clear_text: bool):
        super().__init__(message)
        self.clear_text = clear_text


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a secret lives. ``text`` is the reference as written, for display.

    ``target`` is the Vault path (relative to the KV v2 mount), the variable name, or the
    file path (relative paths are relative to the config file's directory); ``key`` is the
    key inside the Vault secret, ``None`` for the other kinds.
    """

    kind: SecretKind
    target: str
    key: str | None = None

    @property
    def text(self) -> str:
        if self.kind == "vault":
            return f"vault:{self.target}#{self.key}"
        return f"{self.kind}:{self.target}"

    def __str__(self) -> str:
        return self.text


def parse_ref(text: object) -> SecretRef:
    """Parse ``vault:PATH#KEY``, ``env:NAME`` or ``file:PATH``; raise :class:`SecretRefSyntaxError`.

    Called by the config validators for every secret-typed setting (values from the file
    and from ``C2PG__...`` overrides alike). Anything that is not a string, or a string
    without one of the three prefixes, is taken for a secret written in clear.
    """
    if not isinstance(text, str):
        raise SecretRefSyntaxError(CLEAR_TEXT_MESSAGE, clear_text=True)
    kind, sep, rest = text.partition(":")
    if not sep or kind not in ("vault", "env", "file"):
        raise SecretRefSyntaxError(CLEAR_TEXT_MESSAGE, clear_text=True)
    if kind == "vault":
        return _parse_vault_ref(rest)
    if kind == "env":
        if not _ENV_NAME.fullmatch(rest):
            raise SecretRefSyntaxError(
                "env: reference needs a variable name (letters, digits, _), as in env:NAME",
                clear_text=False)
        return SecretRef("env", rest)
    if not rest.strip() or "\x00" in rest:
        raise SecretRefSyntaxError("file: reference needs a path, as in file:PATH", clear_text=False)
    return SecretRef("file", rest)


def _parse_vault_ref(rest: str) -> SecretRef:
    path, sep, key = rest.partition("#")
    path = path.strip("/")
    if not sep or not path or not key or path != path.strip() or key != key.strip():
        raise SecretRefSyntaxError(
            "vault: reference must name a path and a key, as in vault:PATH#KEY", clear_text=False)
    return SecretRef("vault", path, key)


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret setting: its reference, and its value once resolved (never shown).

    Immutable and picklable (it travels inside the config to Ray workers). ``repr`` and
    pydantic serialization show only :meth:`masked`. Callers that need the value (client
    factories such as ``PostgresConfig.connect_kwargs``) call :meth:`get`.
    """

    ref: SecretRef
    value: SecretStr | None = None

    @property
    def resolved(self) -> bool:
        return self.value is not None

    def get(self) -> str:
        """The secret's value; :class:`SecretError` if the config was loaded without secrets."""
        if self.value is None:
            raise SecretError(f"secret {self.ref} was not resolved "
                              "(the config was loaded with resolve_secrets=False)")
        return self.value.get_secret_value()

    def with_value(self, value: str) -> Secret:
        return Secret(self.ref, SecretStr(value))

    def masked(self) -> str:
        """``"<reference> (resolved: ****)"`` or ``"<reference> (unresolved)"``."""
        return f"{self.ref} ({'resolved: ****' if self.resolved else 'unresolved'})"

    def __repr__(self) -> str:
        return f"Secret({self.masked()!r})"

    __str__ = masked

    # --- pydantic integration: validate from a reference string, serialize masked ----------

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda s: s.masked(), return_schema=core_schema.str_schema()))

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        return {"type": "string", "description": f"a secret reference: {REF_HINT}"}

    @classmethod
    def _validate(cls, value: object) -> Secret:
        if isinstance(value, Secret):
            return value
        try:
            return cls(parse_ref(value))
        except SecretRefSyntaxError as exc:
            code = "secret_in_clear" if exc.clear_text else "secret_reference"
            raise PydanticCustomError(code, str(exc)) from None


# --- resolution -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VaultSettings:
    """What :meth:`SecretResolver.connect_vault` needs, credentials already resolved.

    Built by :mod:`engine.config` from the ``vault`` section; credentials are plain strings
    here and kept out of ``repr``.
    """

    url: str
    auth: Literal["token", "approle"]
    mount: str = "secret"
    timeout_s: float = 5.0
    token: str | None = field(default=None, repr=False)
    role_id: str | None = field(default=None, repr=False)
    secret_id: str | None = field(default=None, repr=False)


class VaultLoginError(SecretError):
    """Vault itself is unusable: unreachable, or it rejected our credentials.

    ``setting`` names the config setting to fix (``vault.url``, ``vault.token``,
    ``vault.secret_id``). Every ``vault:`` secret of the load is then unresolvable; the
    config layer reports this once instead of once per secret.
    """

    def __init__(self, setting: str, message: str):
        super().__init__(message)
        self.setting = setting


class SecretResolver:
    """Resolves references for one ``load_config`` call; use as a context manager.

    ``env`` is the environment mapping given to ``load_config`` (``os.environ`` by default);
    ``base_dir`` anchors relative ``file:`` paths. Vault is used only after
    :meth:`connect_vault` succeeded; each Vault path is read once and cached (both outcomes),
    so ten keys of one secret cost one round trip. :meth:`close` drops the client and cache.
    """

    def __init__(self, *, base_dir: Path, env: Mapping[str, str]):
        self._base_dir = base_dir
        self._env = env
        self._vault: hvac.Client | None = None
        self._mount = "secret"
        # path -> the secret's data, or the message of the failure to read it
        self._cache: dict[str, dict[str, Any] | str] = {}

    def __enter__(self) -> SecretResolver:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._vault is not None:
            self._vault.adapter.close()
        self._vault = None
        self._cache.clear()

    def resolve(self, ref: SecretRef) -> str:
        """The value behind ``ref``; :class:`SecretError` (message without the value) if not."""
        if ref.kind == "env":
            return self._read_env(ref)
        if ref.kind == "file":
            return self._read_file(ref)
        return self._read_vault(ref)

    def _read_env(self, ref: SecretRef) -> str:
        value = self._env.get(ref.target)
        if value is None:
            raise SecretError(f"environment variable {ref.target} is not set")
        if value == "":
            raise SecretError(f"environment variable {ref.target} is empty")
        return value

    def _read_file(self, ref: SecretRef) -> str:
        path = (self._base_dir / Path(ref.target).expanduser())
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SecretError(f"secret file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretError(f"cannot read secret file {path}: {_describe(exc)}") from exc
        value = text.rstrip("\r\n")
        if not value:
            raise SecretError(f"secret file {path} is empty")
        return value

    # --- Vault -------------------------------------------------------------------------

    def connect_vault(self, settings: VaultSettings) -> None:
        """Create the load's Vault client and authenticate; :class:`VaultLoginError` if not.

        Token auth is checked with a ``lookup-self`` round trip so a bad token is reported
        against ``vault.token`` rather than as a permission error on every secret.
        """
        client = hvac.Client(url=settings.url, timeout=settings.timeout_s)
        try:
            if settings.auth == "approle":
                client.auth.approle.login(role_id=settings.role_id, secret_id=settings.secret_id)
            else:
                client.token = settings.token
                client.auth.token.lookup_self()
        except (hv.VaultError, requests.exceptions.RequestException) as exc:
            client.adapter.close()
            raise _login_error(exc, settings) from exc
        self.close()
        self._vault = client
        self._mount = settings.mount

    def _read_vault(self, ref: SecretRef) -> str:
        if self._vault is None:
            raise SecretError(f"{ref}: Vault is not connected")
        data = self._read_vault_path(ref.target)
        if ref.key not in data:
            keys = ", ".join(sorted(data)) or "no keys"
            raise SecretError(f"vault secret {ref.target} has no key {ref.key!r} (it has: {keys})")
        value = data[ref.key]
        if not isinstance(value, str) or not value:
            raise SecretError(f"vault secret {ref.target} key {ref.key!r} is not a non-empty string")
        return value

    def _read_vault_path(self, path: str) -> dict[str, Any]:
        if path not in self._cache:
            try:
                self._cache[path] = self._fetch(path)
            except SecretError as exc:
                self._cache[path] = str(exc)
                raise
        cached = self._cache[path]
        if isinstance(cached, str):
            raise SecretError(cached)
        return cached

    def _fetch(self, path: str) -> dict[str, Any]:
        assert self._vault is not None  # checked by _read_vault
        try:
            response = self._vault.secrets.kv.v2.read_secret_version(
                path=path, mount_point=self._mount, raise_on_deleted_version=True)
        except hv.InvalidPath:
            raise SecretError(f"vault secret {path} does not exist "
                              f"(KV v2 mount {self._mount!r})") from None
        except hv.Forbidden:
            raise SecretError(f"permission denied reading vault secret {path} "
                              f"(KV v2 mount {self._mount!r}); check the Vault policy") from None
        except (hv.VaultError, requests.exceptions.RequestException) as exc:
            raise SecretError(f"reading vault secret {path} failed: {_describe(exc)}") from exc
        return dict(response["data"]["data"] or {})


def _login_error(exc: hv.VaultError | requests.exceptions.RequestException,
                 settings: VaultSettings) -> VaultLoginError:
    """Name the setting at fault for a failed login, by exception type.

    Network failures blame ``vault.url``; a server that cannot serve (5xx, sealed, rate
    limited) too; any other Vault answer is a rejection of the credential in use.
    """
    if isinstance(exc, requests.exceptions.RequestException):
        return VaultLoginError("vault.url", f"cannot reach Vault at {settings.url}: {_describe(exc)}")
    if isinstance(exc, (hv.VaultDown, hv.VaultNotInitialized, hv.InternalServerError,
                        hv.BadGateway, hv.RateLimitExceeded)):
        return VaultLoginError("vault.url", f"Vault at {settings.url} cannot serve us: {_describe(exc)}")
    if settings.auth == "approle":
        return VaultLoginError(
            "vault.secret_id", f"Vault at {settings.url} rejected the AppRole login (role_id or "
            f"secret_id wrong, or the secret_id expired): {_describe(exc)}")
    return VaultLoginError(
        "vault.token", f"Vault at {settings.url} rejected the token (wrong or expired): {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    """``Type: message`` of the innermost OS-level cause if there is one (the useful part).

    requests wraps a refused connection three levels deep (ConnectionError → MaxRetryError →
    NewConnectionError → ConnectionRefusedError); the innermost ``OSError`` with an errno says
    what happened in one line. Walks types and attributes only, never message text.
    """
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        cur = stack.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno is not None:
            return f"{type(cur).__name__}: {cur.strerror or cur}"
        nexts = [cur.__cause__, cur.__context__, getattr(cur, "reason", None),
                 *(a for a in cur.args if isinstance(a, BaseException))]
        stack.extend(n for n in nexts if isinstance(n, BaseException))
    return f"{type(exc).__name__}: {exc}"
