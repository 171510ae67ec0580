#!/usr/bin/env bash
# The compose stack's Ray head (docker/compose.yaml): start Ray, deploy the Serve control
# plane from the committed config, then stay in the foreground with Ray. Sync is started by
# the operator (`c2pg sync start`, docker/README.md), so that a stopped pipeline stays stopped.
set -euo pipefail
ray start --head --block --port=6379 --dashboard-host=0.0.0.0 --metrics-export-port=8080 \
    --num-cpus="${RAY_NUM_CPUS:-4}" --disable-usage-stats &
ray_pid=$!
until ray status >/dev/null 2>&1; do
    kill -0 "$ray_pid" 2>/dev/null || { echo "ray-head: ray start exited" >&2; exit 1; }
    sleep 2
done
serve deploy /home/ray/c2pg/serve_app/serve_config.yaml
wait "$ray_pid"
