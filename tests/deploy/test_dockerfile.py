"""The Dockerfile, without a Docker engine: read statically, then its build steps replayed
on this machine (the same RUN commands, with the image's directories mapped to local
ones) into a fresh virtual environment, whose console script then runs as the image's
user on a read-only root: `pagewarm --help`, and `pagewarm exporter` serving /metrics."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.synth import synth
from exporter import __version__
from tests.deploy import dockerfile, kubelet
from tests.support import REPO, require_root

PARSED = dockerfile.parse()
IMAGE = dockerfile.image(PARSED)
# A base image pinned to a full version (python:3.12.12-slim-bookworm), optionally by digest.
PINNED_PYTHON = re.compile(r"^python:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?$")
REQUIRED_LABELS = {
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.source",
    "org.opencontainers.image.licenses",
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.created",
}


def test_multi_stage_from_a_pinned_slim_python() -> None:
    assert len(PARSED.stages) >= 2
    for stage in PARSED.stages:
        assert PINNED_PYTHON.match(stage.base), f"base image not pinned: {stage.base}"
        assert ":latest" not in stage.base
    assert PARSED.directives.get("syntax", "").startswith("docker/dockerfile:1.")
    assert PARSED.stages[0].name == "build"


def test_no_latest_anywhere() -> None:
    text = dockerfile.DOCKERFILE.read_text()
    assert not re.search(r":latest\b", text)
    for value in PARSED.global_args.values():
        assert not value.endswith(":latest")


def test_runs_as_a_numeric_non_root_user() -> None:
    user = PARSED.final.last("USER")
    assert user is not None, "the final stage must set USER"
    assert re.fullmatch(r"\d+:\d+", user.arguments), f"USER must be numeric uid:gid: {user}"
    uid, gid = map(int, user.arguments.split(":"))
    assert uid == 65532 and gid == 65532
    # USER comes after every RUN: nothing runs as root once the user is set.
    keywords = [i.keyword for i in PARSED.final.instructions]
    assert "RUN" not in keywords[keywords.index("USER") :]


def test_entrypoint_is_the_installed_console_script() -> None:
    virtual_env = IMAGE.env["VIRTUAL_ENV"]
    assert IMAGE.entrypoint == [f"{virtual_env}/bin/pagewarm"]
    assert IMAGE.cmd == ["--help"]


def test_read_only_root_filesystem_friendly() -> None:
    env = IMAGE.env
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    # Everything pagewarm writes (samples, and any $HOME or XDG state) lies in the volume.
    (volume,) = IMAGE.volumes
    for key in ("PAGEWARM_SAMPLES", "HOME", "XDG_STATE_HOME"):
        assert env[key] == volume or env[key].startswith(volume + "/"), key
    assert IMAGE.workdir == volume


def test_oci_labels() -> None:
    assert set(IMAGE.labels) >= REQUIRED_LABELS
    assert IMAGE.labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_final_stage_installs_only_the_wheels_of_the_build_stage() -> None:
    final = PARSED.final
    assert not final.all("COPY"), "the final stage copies nothing: it installs the wheel"
    (run,) = final.all("RUN")
    flags, command = run.flags_and_rest()
    assert flags["mount"] == "type=bind,from=build,source=/wheels,target=/wheels"
    assert "--no-index" in command
    assert "--find-links" in command


def test_dockerignore_keeps_the_context_to_the_sources() -> None:
    context = {p.relative_to(REPO).as_posix() for p in dockerfile.build_context()}
    assert {"pyproject.toml", "README.md", "controller/cli.py", "exporter/server.py"} <= context
    for path in context:
        assert path.split("/")[0] in {"pyproject.toml", "README.md", "exporter", "controller"}
        assert "__pycache__" not in path


@dataclass(frozen=True)
class Built:
    venv: Path
    wheels: Path
    state: Path
    root: Path


def replay(root: Path) -> Built:
    """Runs the Dockerfile's stages here: COPY from the .dockerignore'd context, WORKDIR,
    ENV and RUN (as `sh -c`, as Docker does), with the image's directories mapped to
    directories under `root`."""
    directories = {
        "/src": root / "src",
        "/wheels": root / "wheels",
        "/opt/pagewarm": root / "venv",
        "/var/lib/pagewarm": root / "state",
    }
    shims = root / "bin"
    shims.mkdir()
    (shims / "python").symlink_to(sys.executable)
    context = root / "context"
    for file in dockerfile.build_context():
        target = context / file.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, target)

    def local(path: str) -> str:
        for container_path, mapped in directories.items():
            if path == container_path or path.startswith(container_path + "/"):
                return str(mapped) + path[len(container_path) :]
        return path

    for stage in PARSED.stages:
        env: dict[str, str] = {}
        workdir = Path("/")
        for instruction in stage.instructions:
            if instruction.keyword == "ENV":
                for key, raw in instruction.pairs():
                    value = dockerfile.substitute(raw, {**os.environ, **env})
                    env[key] = ":".join(local(part) for part in value.split(":"))
            elif instruction.keyword == "WORKDIR":
                workdir = Path(local(instruction.arguments))
                workdir.mkdir(parents=True, exist_ok=True)
            elif instruction.keyword == "COPY":
                *sources, destination = instruction.arguments.split()
                for source in sources:
                    target = (
                        workdir / destination
                        if not destination.startswith("/")
                        else Path(local(destination))
                    )
                    origin = context / source
                    if origin.is_dir():
                        shutil.copytree(origin, target, dirs_exist_ok=True)
                    else:
                        target.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(origin, target / origin.name)
            elif instruction.keyword == "RUN":
                _, command = instruction.flags_and_rest()
                unmapped = [
                    p for p in re.findall(r"(?<![\w$}])/[\w./-]+", command) if local(p) == p
                ]
                assert not unmapped, f"RUN uses image paths the replay cannot map: {unmapped}"
                run_env = {
                    **os.environ,
                    **env,
                    "PATH": f"{shims}:{env.get('PATH', os.environ['PATH'])}:{os.environ['PATH']}",
                }
                result = subprocess.run(
                    ["sh", "-c", command],
                    cwd=workdir,
                    env=run_env,
                    capture_output=True,
                    text=True,
                    timeout=280,
                    check=False,
                )
                assert result.returncode == 0, f"RUN {command}\n{result.stdout}\n{result.stderr}"
    return Built(
        directories["/opt/pagewarm"], directories["/wheels"], directories["/var/lib/pagewarm"], root
    )


@pytest.fixture(scope="module")
def built() -> Iterator[Built]:
    require_root("the image's install step chowns its state directory, as docker build does")
    root = kubelet.sandbox("image")
    try:
        yield replay(root)
    finally:
        kubelet.remove(root)


def test_the_wheel_holds_the_packages_and_nothing_else(built: Built) -> None:
    (wheel,) = built.wheels.glob("pagewarm-*.whl")
    assert wheel.name.startswith(f"pagewarm-{__version__}-py3-none-any")
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
        names = set(archive.namelist())
    assert tops == {"exporter", "controller", f"pagewarm-{__version__}.dist-info"}
    assert "controller/py.typed" in names
    entry_points = (
        zipfile.ZipFile(wheel).read(f"pagewarm-{__version__}.dist-info/entry_points.txt").decode()
    )
    assert "pagewarm = controller.cli:main" in entry_points


def test_the_environment_holds_the_wheel_and_its_runtime_dependencies_only(built: Built) -> None:
    listing = subprocess.run(
        [
            str(built.venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m\n"
            "print('\\n'.join(sorted(d.metadata['Name'].lower() for d in m.distributions())))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    listing = [re.sub(r"[-_.]+", "-", name) for name in listing]  # PEP 503 names
    assert "pagewarm" in listing
    for runtime in ("prometheus-client", "pydantic-settings", "structlog", "aiohttp", "rich"):
        assert runtime in listing
    for absent in ("pip", "setuptools", "numpy", "pytest", "matplotlib", "safetensors"):
        assert absent not in listing, f"{absent} must not be in the image"
    # Bytecode was compiled at install time: a read-only image never needs to write it.
    assert list(built.venv.glob("lib/python3*/site-packages/controller/__pycache__/*.pyc"))
    assert (built.venv / "bin" / "pagewarm").is_file()


def image_container(built: Built, args: list[str]) -> tuple[kubelet.Pod, kubelet.LocalContainer]:
    """`docker run --read-only --cap-drop ALL --security-opt no-new-privileges
    -v state:/var/lib/pagewarm -v models:/models:ro -p 9741 pagewarm ARGS`."""
    models = built.root / "models"
    container_spec: dict[str, Any] = {
        "name": "pagewarm",
        "args": args,
        "ports": [{"name": "metrics", "containerPort": 9741}],
        "volumeMounts": [
            {"name": "state", "mountPath": IMAGE.volumes[0]},
            {"name": "models", "mountPath": "/models", "readOnly": True},
        ],
        "securityContext": {
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    spec = {
        "volumes": [{"name": "state", "emptyDir": {}}, {"name": "models", "hostPath": {}}],
        "containers": [container_spec],
    }
    if not models.exists():
        synth(models / "tiny", 8 << 20, shards=2)
    pod_root = kubelet.sandbox("image-pod")
    pod = kubelet.Pod.create(spec, [], pod_root, {"models": models})
    container = kubelet.prepare(
        pod, container_spec, IMAGE, image_paths={"/opt/pagewarm": str(built.venv)}
    )
    return pod, container


def test_help_runs_from_the_installed_image(built: Built) -> None:
    pod, container = image_container(built, [])  # no args: the image's CMD, --help
    try:
        assert container.program == [str(built.venv / "bin" / "pagewarm"), "--help"]
        assert container.uid == 65532
        result = container.run(timeout=60)
        assert result.returncode == 0, result.stderr
        assert "usage: pagewarm" in result.stdout
        assert "exporter" in result.stdout
    finally:
        kubelet.remove(pod.root)


def test_exporter_serves_metrics_from_the_installed_image(built: Built) -> None:
    args = ["exporter", "--models-dir", "/models", "--port", "9741"]
    pod, container = image_container(built, args)
    log = pod.root / "exporter.log"
    try:
        with kubelet.running(container, log) as process:
            port = container.ports["metrics"]
            kubelet.wait_for(f"http://127.0.0.1:{port}/healthz", process, log)
            status, metrics = kubelet.http_get(f"http://127.0.0.1:{port}/metrics")
            assert status == 200
            assert f'pagewarm_build_info{{version="{__version__}"}} 1.0' in metrics
            assert re.search(r'pagewarm_model_size_bytes\{model="tiny"\} \d', metrics)
            assert kubelet.stop(process) == 0, log.read_text()
        # Nothing was written outside the state volume (the root was read-only, and the
        # exporter did not even try: no error about it in the log).
        assert "Read-only file system" not in log.read_text()
    finally:
        kubelet.remove(pod.root)
