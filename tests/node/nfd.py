"""A reader of Node Feature Discovery's local feature files, written from NFD's documented
format (the customization guide's "local feature source"), not from its code:

- a directory (``features.d``) of files; names starting with a dot are ignored (writers
  rename a hidden temporary file into place);
- one feature a line, ``<name>[=<value>]``; a name alone means the value "true";
- lines starting with ``#`` are comments; ``# +expiry-time=<RFC 3339>`` ends the file's
  validity at that time, ``# +no-label`` / ``# +no-feature`` apply to the next line;
- a name ``<namespace>/<name>`` becomes a node label with that key; a name without a
  namespace gets ``feature.node.kubernetes.io/`` (NFD before its DisableAutoPrefix gate);
- nfd-master (v0.13+) refuses namespaces ``kubernetes.io`` and ``*.kubernetes.io`` except
  ``feature.node.kubernetes.io`` and ``profile.node.kubernetes.io`` (and their subdomains);
- keys and values are Kubernetes label keys and values: a name part of at most 63
  characters of [A-Za-z0-9._-], alphanumeric at both ends; a DNS-subdomain prefix; a value
  empty or like a name part.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_NAMESPACE = "feature.node.kubernetes.io"
ALLOWED_KUBERNETES_NAMESPACES = ("feature.node.kubernetes.io", "profile.node.kubernetes.io")
_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class FeatureFileError(ValueError):
    pass


def _check_key(key: str, where: str) -> None:
    namespace, _, name = key.rpartition("/")
    if not _NAME.match(name) or len(name) > 63:
        raise FeatureFileError(f"{where}: label name {name!r} is not a Kubernetes label name")
    if len(namespace) > 253 or not _DNS_SUBDOMAIN.match(namespace):
        raise FeatureFileError(f"{where}: namespace {namespace!r} is not a DNS subdomain")
    kubernetes = namespace == "kubernetes.io" or namespace.endswith(".kubernetes.io")
    allowed = any(
        namespace == ns or namespace.endswith("." + ns) for ns in ALLOWED_KUBERNETES_NAMESPACES
    )
    if kubernetes and not allowed:
        raise FeatureFileError(f"{where}: nfd-master denies the namespace {namespace!r}")


def _check_value(value: str, where: str) -> None:
    if value and (len(value) > 63 or not _NAME.match(value)):
        raise FeatureFileError(f"{where}: {value!r} is not a Kubernetes label value")


def parse_features(
    text: str, origin: str = "<text>", now: datetime | None = None
) -> dict[str, str]:
    """The node labels one feature file yields; FeatureFileError for a line NFD would not
    turn into a label. An expired file yields none."""
    labels: dict[str, str] = {}
    skip_next_label = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"{origin}:{number}"
        if not line:
            continue
        if line.startswith("#"):
            directive = line[1:].strip()
            if directive.startswith("+expiry-time="):
                expiry = datetime.fromisoformat(directive.split("=", 1)[1])
                if expiry <= (now or datetime.now(UTC)):
                    return {}
            elif directive == "+no-label":
                skip_next_label = True
            continue
        name, has_value, value = line.partition("=")
        value = value if has_value else "true"
        key = name if "/" in name else f"{DEFAULT_NAMESPACE}/{name}"
        _check_key(key, where)
        _check_value(value, where)
        if not skip_next_label:
            labels[key] = value
        skip_next_label = False
    return labels


def read_features_dir(directory: Path) -> dict[str, str]:
    """Every label the directory's files yield (hidden files skipped), as NFD's worker
    would read them now."""
    labels: dict[str, str] = {}
    for path in sorted(directory.iterdir()) if directory.exists() else []:
        if path.name.startswith(".") or not path.is_file():
            continue
        labels.update(parse_features(path.read_text(), str(path)))
    return labels
