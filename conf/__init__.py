"""circuitkit's presets: the repository's ``conf/`` directory, installed as the package ``circuitkit_conf``.

The primary config (``circuitkit/conf/config.yaml``) puts ``pkg://circuitkit_conf`` on Hydra's search path,
so these groups are found from any working directory, in an editable install and in a wheel alike:

- ``model/``: model presets (``model=bundled``, ``model=gpt2``);
- ``preset/``: whole-run settings, chosen with ``preset=NAME`` (``preset=mib``, ``preset=paper/ioi``).

docs/configuration.md lists them.
"""
