"""Whether the kernel tells this process the truth about a file's page cache.

Since Linux 5.2 (commit 134fca9063ad), mincore reports every page of a file as resident
unless the caller owns the file, may write it, or holds CAP_FOWNER; cachestat applies the
same test and returns EPERM. This module replays that test so a fallback to mincore can
refuse to publish a number the kernel may have faked.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

CAP_FOWNER = 3
CAP_IPC_LOCK = 14
CAP_SYS_ADMIN = 21

# Kubernetes makes an added capability effective only for uid 0 (kubernetes#56374): for a
# non-root container, running as the files' owner is the remedy that works. One text for
# the exporter's reason, the dashboards' "Residency trusted" panel and the runbook
# docs/runbooks/PagewarmResidencyUntrusted.md (tests keep them so).
OWNER_REMEDY = (
    "run pagewarm as the UID that owns the weight files (Kubernetes: securityContext."
    "runAsUser; Helm chart: pagewarm.runAsUser); an added CAP_FOWNER is effective in "
    "Kubernetes only for UID 0"
)
UNTRUSTED_REMEDY = (
    "the kernel hides page-cache state of files this process neither owns nor may write "
    "(the owner is uid {uid}): " + OWNER_REMEDY
)


def effective_capabilities(status_path: Path = Path("/proc/self/status")) -> int:
    """The CapEff bit mask of this process (0 when it cannot be read)."""
    try:
        for line in status_path.read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        return 0
    return 0


@cache
def has_capability(cap: int) -> bool:
    return bool(effective_capabilities() >> cap & 1)


def page_cache_query_trusted(fd: int) -> bool:
    """True when the kernel reports this open file's residency truthfully to us.

    Mirrors mm/mincore.c can_do_mincore(): owner, CAP_FOWNER, or write permission.
    Write permission is tested with faccessat(AT_EACCESS), which also fails on read-only
    mounts: that errs towards 'untrusted', the safe side for a measuring tool.
    """
    st = os.fstat(fd)
    if st.st_uid == os.geteuid() or has_capability(CAP_FOWNER):
        return True
    return os.access(f"/proc/self/fd/{fd}", os.W_OK, effective_ids=True)


def untrusted_reason(fd: int) -> str:
    return UNTRUSTED_REMEDY.format(uid=os.fstat(fd).st_uid)
