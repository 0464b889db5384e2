"""The Kubernetes sidecar: pre-warm, gate vLLM's start, time its loads, keep the weights warm.

One asyncio process (``app``); blocking work (the pre-warm, residency scans, keep-warm
passes, mlock, sample appends) runs in threads, the event loop only serves and coordinates.

- ``app``: the process: the server (/startup, /status, /metrics), the gate loop, the vLLM
  watcher's hooks, the shutdown;
- ``warmer``: the warm, one object: the pre-warm and its sample, then mlock and keep-warm;
- ``settings``: ``SidecarSettings`` (PAGEWARM_* environment, flags win), ``SidecarConfig``;
- ``gate``: the gate policies (full, ratio:X, none) and the gate timeout;
- ``state``: the live state of the warm, the gate, vLLM, keep-warm and mlock (``/status``);
- ``modes``: the page-cache state a vLLM start is labelled with (``SIDECAR_THRESHOLDS``);
- ``vllm``: finding vLLM's process (shared process namespace, ``exporter.linux.proc``),
  polling ``/health``; one observation per vLLM start;
- ``vllm_log``: following vLLM's log for "Model loading took ...";
- ``record``: samples (the store's schema, source "sidecar") and their atomic appends;
- ``keepwarm``: re-warming evicted ranges; ``mlock``: locking the weights in memory;
- ``collector``: the sidecar's own metrics, served beside the exporter's.
"""
