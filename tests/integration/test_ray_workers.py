"""Ray workers get the pipeline's settings, not connections, and open their own.

The pattern every Ray workload of c2pg relies on (snapshot read tasks, sync actors): the
driver loads the config once, Ray pickles it to the workers, and each worker connects to
the real PostgreSQL and Cassandra of the local stack with the resolved secrets.
"""

from __future__ import annotations

import pickle


def test_config_travels_to_ray_workers_which_connect_themselves(ray_cluster, pipeline):
    ray = ray_cluster

    @ray.remote
    def probe(cfg):
        import psycopg2

        from engine import cql

        with psycopg2.connect(**cfg.postgres.connect_kwargs(application_name="c2pg-test")) as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT current_user, current_setting('application_name')")
                pg = cur.fetchone()
        cluster, session = cql.connect(cfg.cassandra)
        try:
            release = session.execute("SELECT release_version FROM system.local").one().release_version
        finally:
            cluster.shutdown()
        return pg, release

    assert pickle.loads(pickle.dumps(pipeline)) == pipeline
    results = ray.get([probe.remote(pipeline) for _ in range(4)])
    for (user, app), release in results:
        assert user == pipeline.postgres.user
        assert app == "c2pg-test"
        assert release.startswith("5.0")
