"""pagewarm's acting side: pre-warm, evict, time loads, run the sidecar, write reports.

Layers, top to bottom; a module imports only from the layers below its own, and modules
side by side in one layer not from each other (import-linter keeps this: pyproject.toml):

- ``cli``: the ``pagewarm`` command line (imports one command module, lazily);
- ``commands``: one module per subcommand: parse flags, call the domain, print;
- ``sidecar``, ``node`` (the node agent): long-running processes;
- ``bench`` (the cold/warm procedure), ``report`` (CSV, markdown, plot from samples);
- ``measure``: one timed load and its sample;
- ``sampling`` (mode thresholds, ``Setup``, the sample header, pre-warm fields),
  ``settings`` (the PAGEWARM_* settings of the acting commands);
- ``prewarm``, ``evict``, ``loaders``, ``timing``, ``scheduler``, ``synth`` (and the planned
  start-up profile, ``profile``): the operations;
- ``memguard``, ``samplestore``, ``ratelimit``, ``units``: what the operations share;
- ``linux``: acting on the page cache, durable writes (the read-only Linux primitives are
  the exporter's: ``exporter.linux``).
"""
