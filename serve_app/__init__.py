"""The Ray Serve control plane of c2pg (health, status, pause/resume, job submission).

Built by the control-plane issue; it will reuse :mod:`engine.health` for ``/readyz``.
"""
