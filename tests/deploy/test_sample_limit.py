"""The monitors' sampleLimit default is derived from what a real exporter serves (chart
README, "Series per node and sampleLimit"): a fixed overhead per exporter, a number of
series per model, per-file series on top. Measured here on the real exporter over a models
directory, as node mode runs it, and on one model with its load histograms, as a sidecar's
exporter serves it."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from controller.synth import synth
from tests.deploy import chart
from tests.prometheus import running_exporter

pytestmark = pytest.mark.slow

MiB = 1 << 20
MODELS = 3
SHARDS = 4
# The README's figures (a test below checks the README states them).
OVERHEAD = 40  # series without a model: process, build, collectors, memory, up to 4 devices
PER_MODEL = 12  # with per-file series off: 10, one more per further device and skip reason
PER_FILE = 4
MODELS_COVERED = 1600


def series(text: str) -> list[dict[str, str]]:
    """The label sets of an exposition's samples (the metric name as __name__)."""
    found = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = re.match(r"[a-zA-Z_:][\w:]*", line)
        assert name, line
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line.partition(" ")[0]))
        found.append({"__name__": name.group(0), **labels})
    return found


def default_limit(values: str, key: str, kind: str) -> int:
    """The limit a release of these values renders when it leaves sampleLimit unset."""
    assert chart.values_yaml()["monitoring"][key]["sampleLimit"] is None
    limit: int = chart.render([chart.values_file(values)]).one(kind)["spec"]["sampleLimit"]
    return limit


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("node-cache")
    for index in range(MODELS):
        synth(root / f"model-{index}", 8 * MiB, shards=SHARDS)
    return root


def test_node_mode_series_fit_the_readme_formula(models_dir: Path, tmp_path: Path) -> None:
    with running_exporter("--models-dir", models_dir, "--samples", tmp_path / "none") as exporter:
        served = series(exporter.get())
    overhead = [s for s in served if "model" not in s]
    per_model = Counter(s["model"] for s in served if "model" in s and "file" not in s)
    per_file = Counter(s["model"] for s in served if "file" in s)
    assert set(per_model) == {f"model-{i}" for i in range(MODELS)}
    devices = len({s["device"] for s in overhead if "device" in s})
    assert devices <= 4
    assert len(overhead) <= OVERHEAD, sorted(s["__name__"] for s in overhead)
    # The per-model figure the README gives is the one with per-file series off (another
    # change trims today's per-model set); the default must hold what the exporter serves
    # now, for the models the README says it covers.
    measured = max(per_model.values())
    limit = default_limit("node", "podMonitor", "PodMonitor")
    assert len(overhead) + measured * MODELS_COVERED <= limit, (len(overhead), measured)
    assert limit >= OVERHEAD + PER_MODEL * MODELS_COVERED
    assert not per_file  # node mode: per-file series off unless asked for


def test_per_file_series_add_at_most_the_readmes_figure_per_file(
    models_dir: Path, tmp_path: Path
) -> None:
    with running_exporter(
        "--models-dir", models_dir, "--per-file-series", "--samples", tmp_path / "none"
    ) as exporter:
        served = series(exporter.get())
    per_file = Counter(s["model"] for s in served if "file" in s)
    assert set(per_file) == {f"model-{i}" for i in range(MODELS)}
    assert max(per_file.values()) <= PER_FILE * SHARDS


def test_one_models_exporter_with_load_histograms_fits_the_default(
    models_dir: Path, tmp_path: Path
) -> None:
    """A sidecar's exporter serves its one model with every load-time histogram (at zero
    before the first load) and per-file series: far below the default."""
    model = models_dir / "model-0"
    with running_exporter("--model-path", model, "--samples", tmp_path / "none") as exporter:
        served = series(exporter.get())
    limit = default_limit("monitoring-on", "serviceMonitor", "ServiceMonitor")
    assert len(served) < limit / 4, len(served)


def test_the_readme_states_the_formula() -> None:
    readme = " ".join((chart.CHART / "README.md").read_text().split())
    assert f"sampleLimit >= {OVERHEAD} + {PER_MODEL} x models" in readme
    assert f"+ {PER_FILE} x weight files" in readme
    assert f"{MODELS_COVERED} models" in readme
