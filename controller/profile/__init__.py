"""Start-up profiles: what an engine reads while it starts (its libraries, its shared
objects, its configuration), recorded once and replayed ahead of it on a cold node.

- ``schema``: the profile file (versioned JSON, gzip optional, size-bound for a ConfigMap);
- ``recorder``: residency deltas and /proc mappings of a running engine, round by round;
- ``session``: recording a command it launches (``pagewarm profile record -- CMD``);
- ``replay``: the profile's ranges in recorded order, with a small I/O depth.
"""
