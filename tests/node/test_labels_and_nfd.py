"""Label names by the contract's rule, and the NFD feature-file reader they must pass."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.node.labels import warm_label_key, warm_label_name
from tests.node.nfd import FeatureFileError, parse_features, read_features_dir


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("llama-3-8b", "warm-llama-3-8b"),
        ("meta-llama/Llama-3.1-8B", "warm-meta-llama-llama-3.1-8b"),
        ("Qwen2.5  7B (instruct)", "warm-qwen2.5-7b-instruct"),
        ("__private.model__", "warm-private.model"),
        ("a//b\\\\c", "warm-a-b-c"),
        ("ÜBER-model", "warm-ber-model"),
    ],
)
def test_label_names_follow_the_contract(name: str, label: str) -> None:
    assert warm_label_name(name) == label
    assert warm_label_key(name) == f"pagewarm.io/{label}"
    assert parse_features(f"{warm_label_key(name)}=true\n") == {f"pagewarm.io/{label}": "true"}


def test_a_long_name_is_cut_and_hashed_to_63_characters() -> None:
    name = "organisation/" + "a-very-long-model-name-" * 4
    label = warm_label_name(name)
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    assert len(label) == 63
    assert label.endswith("-" + digest)
    assert label[5:54] == "organisation-a-very-long-model-name-a-very-long-m"
    assert parse_features(f"pagewarm.io/{label}=true") == {f"pagewarm.io/{label}": "true"}
    assert warm_label_name(name + "x") != label  # the hash tells long names apart


def test_a_name_without_letters_or_digits_has_no_label() -> None:
    with pytest.raises(ValueError, match="cannot name a node label"):
        warm_label_name("../--")


def test_reader_follows_nfd_format() -> None:
    text = (
        "# written by a test\n"
        "\n"
        "pagewarm.io/warm-a=true\n"
        "pagewarm.io/flag\n"
        "plain-name=1.2\n"
        "# +no-label\n"
        "pagewarm.io/hidden=true\n"
    )
    assert parse_features(text) == {
        "pagewarm.io/warm-a": "true",
        "pagewarm.io/flag": "true",
        "feature.node.kubernetes.io/plain-name": "1.2",
    }


@pytest.mark.parametrize(
    "line",
    [
        "kubernetes.io/warm-a=true",
        "node.kubernetes.io/warm-a=true",
        "pagewarm.io/-warm=true",
        "pagewarm.io/" + "a" * 64,
        "Pagewarm.IO/warm-a=true",
        "pagewarm.io/warm-a=not a value",
    ],
)
def test_reader_refuses_what_nfd_would_not_label(line: str) -> None:
    with pytest.raises(FeatureFileError):
        parse_features(line)


def test_allowed_kubernetes_namespaces_and_expiry() -> None:
    assert parse_features("feature.node.kubernetes.io/x=true\nprofile.node.kubernetes.io/y") == {
        "feature.node.kubernetes.io/x": "true",
        "profile.node.kubernetes.io/y": "true",
    }
    expired = "# +expiry-time=2020-01-01T00:00:00Z\npagewarm.io/warm-a=true\n"
    assert parse_features(expired, now=datetime(2021, 1, 1, tzinfo=UTC)) == {}


def test_hidden_files_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "pagewarm").write_text("pagewarm.io/warm-a=true\n")
    (tmp_path / ".pagewarm.123.tmp").write_text("kubernetes.io/broken\n")
    assert read_features_dir(tmp_path) == {"pagewarm.io/warm-a": "true"}
