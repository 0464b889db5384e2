"""The node label that says a model is warm, as Node Feature Discovery will set it.

NFD's local source turns each line ``pagewarm.io/warm-<slug>=true`` of a file in its
``features.d`` directory into that node label. A label name (the part after the prefix)
is at most 63 characters of ``[A-Za-z0-9._-]``, starting and ending with an alphanumeric:
model names are not (``meta-llama/Llama-3.1-8B``), so they are slugged. The rule is the
chart's too (``pagewarm.warmLabelKey``); both follow NODE_CONTRACT.md to the letter, and a
chart test compares them on awkward names.
"""

from __future__ import annotations

import hashlib
import re

LABEL_PREFIX = "pagewarm.io/"
_NAME_PREFIX = "warm-"
MAX_NAME_LENGTH = 63
_HASH_LENGTH = 8
_OUTSIDE = re.compile(r"[^a-z0-9._-]+")
_EDGES = re.compile(r"^[^a-z0-9]+|[^a-z0-9]+$")


def slug(model_name: str) -> str:
    """The model's part of its label name; "" when nothing usable is left."""
    text = _EDGES.sub("", _OUTSIDE.sub("-", model_name.lower()))
    if len(_NAME_PREFIX) + len(text) > MAX_NAME_LENGTH:
        digest = hashlib.sha256(model_name.encode("utf-8")).hexdigest()[:_HASH_LENGTH]
        keep = MAX_NAME_LENGTH - len(_NAME_PREFIX) - _HASH_LENGTH - 1
        text = f"{text[:keep]}-{digest}"
    return text


def warm_label_name(model_name: str) -> str:
    """``warm-<slug>``: the label's name without its prefix. ValueError for a name that
    slugs to nothing (config validation refuses those)."""
    found = slug(model_name)
    if not found:
        raise ValueError(
            f"model name {model_name!r} has no letter or digit: it cannot name a node label"
        )
    return _NAME_PREFIX + found


def warm_label_key(model_name: str, prefix: str = LABEL_PREFIX) -> str:
    """The full label key, ``pagewarm.io/warm-<slug>``."""
    return prefix + warm_label_name(model_name)
