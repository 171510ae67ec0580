#!/usr/bin/env bash
# The compose stack's Ray head (docker/compose.yaml): start Ray, deploy the Serve control
# plane from the committed config, start the pipeline's sync, then stay in the foreground
# with Ray. Sync waits for topics that do not exist yet (a table's topic appears with its
# first event) and picks them up, so it can start before any table is created.
# `c2pg sync start` finds this head through RAY_ADDRESS, which compose sets to the --port below.
set -euo pipefail
ray start --head --block --port=6379 --dashboard-host=0.0.0.0 --metrics-export-port=8080 \
    --num-cpus="${RAY_NUM_CPUS:-4}" --disable-usage-stats &
ray_pid=$!
until ray status >/dev/null 2>&1; do
    kill -0 "$ray_pid" 2>/dev/null || { echo "ray-head: ray start exited" >&2; exit 1; }
    sleep 2
done
# `ray status` answers once GCS does; `serve deploy` talks to the dashboard's REST API, which
# comes up a few seconds later. Retry for two minutes, then give up: compose restarts the head.
attempts=60
until serve deploy /home/ray/c2pg/serve_app/serve_config.yaml; do
    kill -0 "$ray_pid" 2>/dev/null || { echo "ray-head: ray start exited" >&2; exit 1; }
    attempts=$((attempts - 1))
    [ "$attempts" -gt 0 ] || { echo "ray-head: serve deploy kept failing; giving up" >&2; exit 1; }
    sleep 2
done
c2pg sync start --config /etc/c2pg/pipeline.yaml \
    || echo "ray-head: c2pg sync start failed; see above, then run it by hand" >&2
wait "$ray_pid"
