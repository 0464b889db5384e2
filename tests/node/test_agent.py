"""The node agent in this process, on real files and the real page cache: the config and
its reloads, the warm map with hysteresis, thrashing, the feature file; and the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from controller.node.agent import NodeAgent
from controller.node.config import ConfigError, ConfigFile, parse_config
from controller.node.room import WINDOW_BYTES, make_room
from controller.node.settings import NodeSettings
from controller.prewarm import prewarm
from controller.synth import synth
from exporter.residency import ResidencyProbe
from exporter.weightset import discover
from tests.node.nfd import read_features_dir
from tests.support import evict_path, pagewarm

MiB = 1 << 20
TiB = 1 << 40


@pytest.fixture
def models(shared_tmp: Path) -> Path:
    for name in ("big", "small"):
        synth(shared_tmp / name, 16 * MiB, shards=2)
        evict_path(shared_tmp / name)
    return shared_tmp


def _config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _agent(root: Path, config: Path, **settings: object) -> NodeAgent:
    fields = {"node_name": "n1", "nfd_features_dir": root / "features.d", **settings}
    return NodeAgent(NodeSettings(**fields), ConfigFile(config))  # type: ignore[arg-type]


def _model(agent: NodeAgent, name: str) -> dict[str, object]:
    return next(m for m in agent.map.document()["models"] if m["name"] == name)


def test_config_is_yaml_or_json_and_validated() -> None:
    yaml_config = parse_config("models:\n  - {name: a, path: /m/a, priority: 3}\n", "y")
    json_config = parse_config('{"models": [{"name": "a", "path": "/m/a", "priority": 3}]}', "j")
    assert yaml_config == json_config
    assert yaml_config.models[0].priority == 3
    assert parse_config("models: [{name: b, path: /m/b}]", "d").models[0].priority == 0
    for text, problem in [
        ("models: [{name: a, path: /a}, {name: a, path: /b}]", "unique"),
        ("models: [{name: A, path: /a}, {name: a, path: /b}]", "same node label"),
        ("models: [{name: '--', path: /a}]", "cannot name a node label"),
        ("models: [{name: a, path: /a, prio: 1}]", "Extra inputs"),
        ("models: [{name: a}]", "path"),
        ("models: [", "not YAML"),
    ]:
        with pytest.raises(ConfigError, match=problem):
            parse_config(text, "t")


def test_keeps_models_warm_and_publishes_the_map(models: Path) -> None:
    config = _config(
        models / "models.yaml",
        f"models:\n  - {{name: big, path: {models / 'big'}, priority: 5}}\n"
        f"  - {{name: small, path: {models / 'small'}}}\n"
        f"  - {{name: missing, path: {models / 'nowhere'}}}\n",
    )
    agent = _agent(models, config)
    node_map = agent.run_pass()
    assert [m.name for m in node_map.models] == ["big", "small", "missing"]
    big, small, missing = node_map.models
    assert big.warm and small.warm and not missing.warm
    assert big.ratio is not None and big.ratio >= 0.95
    assert big.rewarm_bytes_total >= 0.9 * big.size_bytes
    assert missing.error is not None and "does not exist" in missing.error
    assert read_features_dir(models / "features.d") == {
        "pagewarm.io/warm-big": "true",
        "pagewarm.io/warm-small": "true",
    }
    written = (models / "features.d" / "pagewarm").stat().st_mtime_ns
    agent.run_pass()
    # Unchanged content: the file is left alone.
    assert (models / "features.d" / "pagewarm").stat().st_mtime_ns == written


def test_warm_has_hysteresis(models: Path) -> None:
    config = _config(models / "models.yaml", f"models: [{{name: big, path: {models / 'big'}}}]")
    agent = _agent(models, config)
    size = agent.run_pass().models[0].size_bytes
    assert _model(agent, "big")["warm"] is True
    # No budget from now on (the reserve exceeds any memory): nothing is re-read.
    agent.settings = agent.settings.model_copy(update={"node_reserve": TiB})
    shard = sorted((models / "big").glob("*.safetensors"))[-1]
    fd = os.open(shard, os.O_RDONLY)
    try:  # drop ~7% of the model: below the threshold (0.95), above threshold - 0.05
        os.posix_fadvise(fd, 0, int(0.07 * size), os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    node_map = agent.run_pass()
    ratio = node_map.models[0].ratio
    assert ratio is not None and 0.90 <= ratio < 0.95
    assert node_map.models[0].warm  # still warm: inside the hysteresis band
    assert node_map.backoffs["budget"] == 1
    evict_path(models / "big")
    assert not agent.run_pass().models[0].warm
    assert read_features_dir(models / "features.d") == {}


def test_a_model_evicted_too_often_is_thrashing_and_not_reread(models: Path) -> None:
    config = _config(
        models / "models.yaml",
        f"models:\n  - {{name: big, path: {models / 'big'}, priority: 5}}\n"
        f"  - {{name: small, path: {models / 'small'}}}\n",
    )
    agent = _agent(models, config, node_thrash_evictions=1)
    agent.run_pass()
    evict_path(models / "big")
    node_map = agent.run_pass()  # one eviction: re-read
    assert node_map.models[0].warm and not node_map.models[0].thrashing
    evict_path(models / "big")
    evict_path(models / "small")
    node_map = agent.run_pass()  # two evictions in the window: thrashing
    big, small = node_map.models
    assert big.thrashing and not big.warm
    assert big.resident_bytes is not None and big.resident_bytes < 0.05 * big.size_bytes
    # The lower priority is not re-read either: it would take memory the thrashing one lacks.
    assert small.resident_bytes is not None and small.resident_bytes < 0.05 * small.size_bytes
    assert node_map.backoffs["thrashing"] == 1
    assert node_map.stopped_by == "thrashing"


def test_config_reload_and_a_broken_version_keeps_the_last_good(models: Path) -> None:
    config = _config(models / "models.yaml", f"models: [{{name: big, path: {models / 'big'}}}]")
    agent = _agent(models, config)
    agent.run_pass()
    config.write_text(f'{{"models": [{{"name": "small", "path": "{models / "small"}"}}]}}')
    node_map = agent.run_pass()
    assert [m.name for m in node_map.models] == ["small"]
    assert node_map.config.reloads == 1
    config.write_text("models: [{name: small}]\n# broken\n")
    node_map = agent.run_pass()
    assert [m.name for m in node_map.models] == ["small"]
    assert not node_map.config.valid
    assert node_map.config.error is not None and "path" in node_map.config.error


def test_cli_once_json_prints_the_map(models: Path) -> None:
    config = _config(models / "models.yaml", f"models: [{{name: big, path: {models / 'big'}}}]")
    done = pagewarm(
        "node", "--config", config, "--once", "--json", "--node-name", "n9",
        "--nfd-features-dir", models / "fd", "--rate-limit", "64MiB/s", check=True,
    )  # fmt: skip
    document = json.loads(done.stdout)
    assert document["node"] == "n9"
    assert document["models"][0]["warm"] is True
    assert read_features_dir(models / "fd") == {"pagewarm.io/warm-big": "true"}
    text = pagewarm("node", "--models-dir", models, "--once", check=True).stdout
    assert "big" in text and "warm" in text


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        # The message names where the value came from: the flag, or the variable.
        (["--interval", "soon"], {}, "--interval soon: not a duration"),
        (["--rate-limit", "fast"], {}, "--rate-limit fast: not a size"),
        (["--warm-threshold", "1.5"], {}, "--warm-threshold 1.5: Input should be less than"),
        ([], {"PAGEWARM_NODE_INTERVAL": "-1"}, "PAGEWARM_NODE_INTERVAL='-1': not a duration"),
    ],
)
def test_bad_flags_and_settings_are_one_line_errors(
    models: Path, args: list[str], env: dict[str, str], says: str
) -> None:
    config = _config(models / "models.yaml", f"models: [{{name: big, path: {models / 'big'}}}]")
    done = pagewarm("node", "--config", config, "--once", *args, env=env)
    assert done.returncode == 2
    assert says in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr


def test_no_models_or_a_broken_config_at_start_is_a_usage_error(models: Path) -> None:
    done = pagewarm("node", "--once")
    assert done.returncode == 2
    assert "no models to keep warm" in done.stderr
    broken = _config(models / "broken.yaml", "models: [{name: a, path: /a}, {name: a, path: /b}]")
    done = pagewarm("node", "--config", broken, "--once")
    assert done.returncode == 2
    assert "unique" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_room_is_made_from_the_end_backwards_and_only_as_much_as_needed(models: Path) -> None:
    probe = ResidencyProbe()
    weight_set = discover(models / "big")
    prewarm(weight_set, probe=probe)
    before = probe.measure(weight_set)
    assert before.ratio is not None and before.ratio >= 0.95
    freed = make_room(5 * MiB, [before], probe)
    after = probe.measure(weight_set)
    assert before.cached_bytes is not None and after.cached_bytes is not None
    dropped = before.cached_bytes - after.cached_bytes
    assert 5 * MiB <= freed <= 5 * MiB + WINDOW_BYTES
    # DAMON may take a few pages meanwhile: at least what make_room counts is gone (to a
    # page: a file's last page is counted whole in a window, clamped to the file's size).
    page = os.sysconf("SC_PAGE_SIZE")
    assert freed - page <= dropped <= freed + WINDOW_BYTES
    first, last = after.files[0], after.files[-1]
    assert first.cached_bytes == before.files[0].cached_bytes  # the load order's start stays
    assert last.cached_bytes is not None and last.cached_bytes < before.files[-1].size
