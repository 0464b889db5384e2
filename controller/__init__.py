"""pagewarm's acting side: pre-warm, evict, time loads, run the sidecar, write reports."""
