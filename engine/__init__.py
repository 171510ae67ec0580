"""c2pg's engine: the library that snapshot, sync, reconcile and the control plane share.

Public entry points live in submodules: :mod:`engine.config` (the pipeline file),
:mod:`engine.health` (component checks), :mod:`engine.stack` (the local stack),
:mod:`engine.errors` (the exception tree).
"""

__version__ = "0.1.0"


def _speak_ray_token_auth() -> None:
    """Use Ray's token authentication when a token is present (the local stack's Ray head,
    like any Ray >= 2.5x cluster started with defaults, requires it). Ray reads the mode once,
    when it is first imported, so this runs here: every c2pg entry point imports ``engine``
    before ``ray``. An explicit ``RAY_AUTH_MODE`` always wins."""
    import os
    from pathlib import Path

    if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or
                                             Path.home().joinpath(".ray", "auth_token").exists()):
        os.environ["RAY_AUTH_MODE"] = "token"


_speak_ray_token_auth()
