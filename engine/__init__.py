"""c2pg's engine: the library that snapshot, sync, reconcile and the control plane share.

Public entry points live in submodules: :mod:`engine.config` (the pipeline file),
:mod:`engine.health` (component checks), :mod:`engine.stack` (the local stack),
:mod:`engine.errors` (the exception tree).
"""

__version__ = "0.1.0"


def _speak_ray_token_auth() -> None:
    """Speak Ray's token authentication with the local stack's token when no other is given.

    The stack's Ray head requires a token, which ``c2pg stack up`` keeps in
    ``<stack>/secrets/ray-auth-token`` (:mod:`engine.stack.root`), never in the home
    directory. Ray reads the mode and the token's location once, when it is first imported
    and first connects, so this runs here: every c2pg entry point imports ``engine`` before
    ``ray``. A token or mode given in the environment (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH``, ``RAY_AUTH_MODE``: a KubeRay pod, ``ray job submit``'s runtime)
    always wins."""
    import os

    from engine.stack.root import ray_token_path

    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        return
    stack_token = ray_token_path()
    if stack_token.exists():
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(stack_token)
        os.environ.setdefault("RAY_AUTH_MODE", "token")


_speak_ray_token_auth()
