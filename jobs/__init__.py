"""Entry points run as ``python -m jobs.<name>``, locally or with ``ray job submit``.

Each module parses its arguments, loads the pipeline config once (:func:`engine.config.load_config`)
and calls the library; exit code 2 means bad configuration or arguments.
"""
