"""The Kubernetes sidecar: pre-warm, gate vLLM's start, time its loads, keep the weights warm.

One asyncio process (``app``); blocking work (the pre-warm, residency scans, keep-warm
passes, mlock, sample appends) runs in threads, the event loop only serves and coordinates.

- ``settings``: ``SidecarSettings`` (PAGEWARM_* environment, flags win);
- ``gate``: the gate policies (full, ratio:X, none) and the gate timeout;
- ``state``: the live state of the warm, the gate, vLLM, keep-warm and mlock (``/status``);
- ``modes``: the page-cache state a vLLM start is labelled with, and its thresholds;
- ``vllm``: finding vLLM's process (shared process namespace), polling ``/health``, reading
  its log for "Model loading took ..."; one observation per vLLM start;
- ``record``: samples (the store's schema, source "sidecar") and their atomic appends;
- ``keepwarm``: re-warming evicted ranges; ``mlock``: locking the weights in memory;
- ``collector``: the sidecar's own metrics, served beside the exporter's.
"""
