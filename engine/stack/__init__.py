"""The local stack of real servers that the demo and the tests run against.

:mod:`engine.stack.versions` pins versions and ports, :mod:`engine.stack.services` knows
each server, :mod:`engine.stack.launcher` runs them (``c2pg stack ...``).
"""
