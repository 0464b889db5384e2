"""The node agent (`pagewarm node`): keeps a node's models warm in the page cache and
publishes the warm map (metrics, /status, a Node Feature Discovery feature file).

- ``config``: the models to keep warm (YAML/JSON, re-read on change) or a models directory;
- ``settings``: the PAGEWARM_* settings; ``labels``: the node label of a model;
- ``agent``: one keep-warm pass and the state between passes; ``state``: the warm map;
  ``features``: the NFD feature file;
- ``collector``: the map as metrics; ``app``: the HTTP server and the pass loop.
"""
