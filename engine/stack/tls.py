"""The local stack's certificates: one CA, one server certificate, one client certificate.

``c2pg stack up --tls`` calls :func:`ensure_certificates`, which writes them into
``<stack>/tls/`` (PEM for the Python clients and PostgreSQL; PKCS#12 stores for the Java
servers) and returns their paths. It is idempotent: files that exist and stay valid for
more than :data:`RENEW_BEFORE` are kept, otherwise everything is issued again from a new CA
(a server certificate from one CA and a client's trust in another would fail the handshake).
Private keys and stores are 0600; nothing is written outside the stack directory.

The server certificate names ``127.0.0.1`` and ``localhost`` (every server of the stack
listens on loopback), so clients verify host names. The client certificate's common name
is :data:`CLIENT_CN`: PostgreSQL's ``clientcert=verify-full`` requires it to equal the role.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import subprocess  # nosec B404 - runs keytool, a fixed program with fixed arguments
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from engine.errors import StackError

CLIENT_CN = "c2pg_tls"  # the PostgreSQL role of the TLS-only login (clientcert=verify-full)
VALID_FOR = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=7)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where :func:`ensure_certificates` put everything (all absolute)."""

    dir: Path

    ca_cert = property(lambda self: self.dir / "ca.crt")
    ca_key = property(lambda self: self.dir / "ca.key")
    server_cert = property(lambda self: self.dir / "server.crt")
    server_key = property(lambda self: self.dir / "server.key")
    client_cert = property(lambda self: self.dir / "client.crt")
    client_key = property(lambda self: self.dir / "client.key")
    # PKCS#12 for Cassandra and Kafka: the server's key and chain; the CA as a trusted entry
    server_store = property(lambda self: self.dir / "server.p12")
    trust_store = property(lambda self: self.dir / "truststore.p12")

    def all(self) -> list[Path]:
        return [self.ca_cert, self.ca_key, self.server_cert, self.server_key, self.client_cert,
                self.client_key, self.server_store, self.trust_store]


def ensure_certificates(root: Path, store_password: str, ca_name: str = "c2pg local stack CA") -> TlsFiles:
    """The stack's certificates under ``root/tls``, issued now if missing or expiring."""
    files = TlsFiles(root / "tls")
    if all(p.exists() for p in files.all()) and _valid(files.server_cert) and _valid(files.client_cert):
        return files
    files.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(files.dir, 0o700)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca = (_builder(issuer, issuer, ca_key, now)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server_key, server = _leaf(ca, ca_key, "127.0.0.1", now, ExtendedKeyUsageOID.SERVER_AUTH,
                               [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    client_key, client = _leaf(ca, ca_key, CLIENT_CN, now, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    _write(files.ca_cert, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(files.ca_key, _pem_key(ca_key), 0o600)
    _write(files.server_cert, server.public_bytes(serialization.Encoding.PEM)
           + ca.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(files.server_key, _pem_key(server_key), 0o600)
    _write(files.client_cert, client.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(files.client_key, _pem_key(client_key), 0o600)
    _write(files.server_store, pkcs12.serialize_key_and_certificates(
        b"server", server_key, server, [ca],
        serialization.BestAvailableEncryption(store_password.encode())), 0o600)
    _trust_store(files, store_password)
    return files


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey,
             now: dt.datetime) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALID_FOR))


def _leaf(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, cn: str, now: dt.datetime,
          usage: x509.ObjectIdentifier, sans: list[x509.GeneralName],
          ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (_builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]), ca.subject, key, now)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _trust_store(files: TlsFiles, password: str) -> None:
    """The CA as a PKCS#12 trust store. Java trusts a PKCS#12 certificate entry only with
    its own attribute, which keytool writes and Python's libraries do not: hence keytool."""
    files.trust_store.unlink(missing_ok=True)
    from engine.stack.services import java_bin  # the same JDK the servers run on

    keytool = Path(java_bin("tls")).with_name("keytool")
    proc = subprocess.run([str(keytool), "-importcert",  # nosec B603 - no shell, our own arguments
                           "-noprompt", "-alias", "c2pg-ca", "-file", str(files.ca_cert),
                           "-keystore", str(files.trust_store), "-storetype", "PKCS12",
                           "-storepass:env", "C2PG_STORE_PASSWORD"],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "C2PG_STORE_PASSWORD": password})
    if proc.returncode != 0 or not files.trust_store.exists():
        output = (proc.stderr + proc.stdout).strip()[-300:]
        raise StackError("tls", f"keytool could not write the trust store: {output}")
    os.chmod(files.trust_store, 0o600)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # never readable by others, not even briefly
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _valid(cert_path: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return False
    return cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > RENEW_BEFORE
