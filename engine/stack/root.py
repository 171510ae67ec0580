"""Where the local stack lives, and the Ray token it owns — importable without the launcher.

:mod:`engine` imports this at start (before ``ray``) to point Ray's clients at the stack's
token, so it must stay cheap: the standard library only.
"""

from __future__ import annotations

import os
from pathlib import Path

RAY_TOKEN_FILE = "ray-auth-token"  # under <stack>/secrets/, 0600, created by `c2pg stack up`


def default_root() -> Path:
    """``$C2PG_STACK_DIR``, else ``.stack`` at the top of the checkout (git-ignored)."""
    env = os.environ.get("C2PG_STACK_DIR")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2] / ".stack"


def ray_token_path(root: Path | None = None) -> Path:
    """The file holding the stack's Ray authentication token (it may not exist yet)."""
    return (root or default_root()) / "secrets" / RAY_TOKEN_FILE
