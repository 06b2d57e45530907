"""circuitkit's builtin plugins.

Each module is registered through the ``circuitkit`` entry-point group in pyproject.toml, exactly as a
third party's plugin would be; circuitkit's core never imports them.
"""
