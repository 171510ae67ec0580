"""c2pg's engine: the library that snapshot, sync, reconcile and the control plane share.

Public entry points live in submodules: :mod:`engine.config` (the pipeline file),
:mod:`engine.health` (component checks), :mod:`engine.stack` (the local stack),
:mod:`engine.errors` (the exception tree).
"""

__version__ = "0.1.0"
