"""Runs a container of a rendered pod as a local process, the way the kubelet and the
container runtime would, as far as it matters for drift between the chart and the CLI:

- the program is the image's ENTRYPOINT (read from the Dockerfile) unless the container
  sets `command`, followed by the container's `args` (or the image's CMD);
- the environment is the image's ENV, then the container's `env`, with Kubernetes'
  `$(VAR)` expansion in env values, command and args; the downward API's
  `fieldRef: spec.nodeName` is this machine's host name (a kubelet's node name by default);
- every volumeMount is a local directory; container paths in the command line and the
  environment are rewritten to those directories, and container ports to free ones;
- the user and group are the rendered ones, capabilities follow the runtime's rules (the
  added ones reach the bounding set; a non-root process keeps none of them, because
  Kubernetes sets no ambient capabilities), allowPrivilegeEscalation false is
  no_new_privs, and readOnlyRootFilesystem is a private mount namespace in which every
  file system but the volumes is read-only;
- each container has its own PID namespace, unless the pod sets shareProcessNamespace:
  then all share one, held by a pause process, as the kubelet does it.

The program itself is this checkout's `pagewarm` console script: the image's
/opt/pagewarm is the virtual environment the tests run in.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.deploy import dockerfile
from tests.support import require_binary

Manifest = dict[str, Any]

# The image's virtual environment (Dockerfile: VIRTUAL_ENV) is the one running the tests.
IMAGE_PATHS = {"/opt/pagewarm": sys.prefix}
# containerd's and CRI-O's default capabilities (what "drop" takes away from).
RUNTIME_DEFAULT_CAPABILITIES = frozenset(
    {
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    }
)
# File systems a container does not get to write: everything but its volumes.
_WRITABLE_FS_TYPES = {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs"}
_ENV_REFERENCE = re.compile(r"\$\$|\$\((\w+)\)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, $$ escapes a $,
    undefined references stay as they are."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _ENV_REFERENCE.sub(replace, text)


# The downward API fields the kubelet fills in, as far as the chart uses them.
DOWNWARD_FIELDS = {"spec.nodeName": socket.gethostname}


def downward(variable: Manifest) -> str:
    """The value the kubelet gives an env var that reads a field of its pod."""
    field_path = variable["valueFrom"].get("fieldRef", {}).get("fieldPath")
    assert field_path in DOWNWARD_FIELDS, f"env {variable['name']}: {variable['valueFrom']}"
    return DOWNWARD_FIELDS[field_path]()


@dataclass
class Pod:
    """The volumes of one rendered pod, as local directories, and its shared PID namespace
    (when it has one). Close it (or use it as a context manager) to end the latter."""

    spec: Manifest
    manifests: list[Manifest]
    root: Path
    volume_dirs: dict[str, Path] = field(default_factory=dict)
    # One network namespace per pod: each container port of the pod is one local port.
    port_map: dict[int, int] = field(default_factory=dict)
    pause: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Pod:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.pause is not None and self.pause.poll() is None:
            os.killpg(self.pause.pid, signal.SIGKILL)
            self.pause.wait()

    @property
    def shared_pid_namespace(self) -> int | None:
        """The host PID of the pause process whose PID namespace the containers share."""
        if self.pause is None:
            return None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            children = _children(self.pause.pid)
            if children:
                return children[0]
            time.sleep(0.02)
        raise AssertionError("the pause process did not start")

    @classmethod
    def create(
        cls, spec: Manifest, manifests: list[Manifest], root: Path, provided: Mapping[str, Path]
    ) -> Pod:
        """Local directories for the pod's volumes: `provided` ones (the model) by name,
        emptyDirs as fresh world-writable directories (as the kubelet makes them),
        configMaps filled from the rendered ConfigMaps."""
        pod = cls(spec, manifests, root)
        for container in spec.get("initContainers", []) + spec.get("containers", []):
            for port in container.get("ports", []):
                pod.port_map.setdefault(int(port["containerPort"]), free_port())
        # Provided directories may also stand for volumes the pod spec does not declare
        # (the snippet mounts a volume of the user's own pod).
        pod.volume_dirs.update(provided)
        for volume in spec.get("volumes", []):
            name = volume["name"]
            if name in provided:
                pod.volume_dirs[name] = provided[name]
            elif "emptyDir" in volume:
                path = root / "volumes" / name
                path.mkdir(parents=True)
                path.chmod(0o777)
                pod.volume_dirs[name] = path
            elif "configMap" in volume:
                pod.volume_dirs[name] = pod._config_map(volume["configMap"]["name"])
            else:
                raise AssertionError(f"volume {name} ({volume}) needs a local directory")
        if spec.get("shareProcessNamespace"):
            # The pause process: PID 1 of the namespace the pod's containers share.
            unshare = require_binary("unshare")
            pod.pause = subprocess.Popen(
                [unshare, "--pid", "--fork", "--mount-proc", "sleep", "infinity"],
                start_new_session=True,
            )
        return pod

    def _config_map(self, name: str) -> Path:
        found = [
            m for m in self.manifests if m["kind"] == "ConfigMap" and m["metadata"]["name"] == name
        ]
        assert found, f"the pod mounts ConfigMap {name}, which the chart does not render"
        path = self.root / "volumes" / f"configmap-{name}"
        path.mkdir(parents=True)
        for key, value in found[0].get("data", {}).items():
            (path / key).write_text(value)
        path.chmod(0o755)
        for child in path.iterdir():
            child.chmod(0o644)
        return path


@dataclass
class LocalContainer:
    """A rendered container made runnable here."""

    name: str
    argv: list[str]  # the wrapped command line (unshare, setpriv, program, arguments)
    program: list[str]  # the program and its arguments, after rewriting
    env: dict[str, str]
    cwd: Path
    ports: dict[str, int]  # port name -> local port
    port_map: dict[int, int]  # container port -> local port
    path_map: dict[str, Path]  # container mount path -> local directory
    uid: int
    gid: int
    effective_capabilities: frozenset[str]
    manifest: Manifest

    def local_path(self, container_path: str) -> Path:
        return Path(_rewrite_path(container_path, self.path_map))

    def probe_url(self, probe: str) -> str:
        http = self.manifest[probe]["httpGet"]
        port = http["port"]
        local = self.ports[port] if isinstance(port, str) else self.port_map[int(port)]
        return f"http://127.0.0.1:{local}{http['path']}"

    def start(self, log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def run(self, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _rewrite_path(value: str, path_map: Mapping[str, Path]) -> str:
    for container_path in sorted(path_map, key=len, reverse=True):
        prefix = container_path.rstrip("/")
        if value == prefix or value.startswith(prefix + "/"):
            return str(path_map[container_path]) + value[len(prefix) :]
    return value


def _rewrite(value: str, path_map: Mapping[str, Path], port_map: Mapping[int, int]) -> str:
    value = _rewrite_path(value, path_map)
    for old, new in port_map.items():
        if value == str(old):
            return str(new)
        # A URL to a port of the pod (vLLM's /health): same host, the local port.
        value = re.sub(rf"(://(?:127\.0\.0\.1|localhost)):{old}(?=/|$)", rf"\g<1>:{new}", value)
    return value


def _capabilities(security: Manifest, uid: int) -> tuple[frozenset[str], frozenset[str]]:
    """(bounding set, effective set) as containerd/CRI-O and the kernel make them."""
    capabilities = security.get("capabilities", {})
    drop = {c.upper() for c in capabilities.get("drop", [])}
    add = {c.upper() for c in capabilities.get("add", [])}
    bounding = set() if "ALL" in drop else set(RUNTIME_DEFAULT_CAPABILITIES) - drop
    bounding |= add
    # execve() as non-root keeps only ambient capabilities, and Kubernetes sets none
    # (kubernetes/kubernetes#56374, KEP-2763): capabilities work for UID 0 only.
    effective = bounding if uid == 0 else set()
    return frozenset(bounding), frozenset(effective)


def _writable_mounts() -> list[str]:
    """Mount points of this machine a container would not be able to write."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        mount_point = fields[4].replace("\\040", " ")
        options, fs_type = fields[5].split(","), fields[separator + 1]
        if "rw" in options and fs_type in _WRITABLE_FS_TYPES:
            points.append(mount_point)
    return points


def prepare(
    pod: Pod,
    container: Manifest,
    image: dockerfile.Image | None = None,
    image_paths: Mapping[str, str] = IMAGE_PATHS,
) -> LocalContainer:
    """The command line, environment and identity that run `container` here;
    `image_paths` maps directories of the image to local ones."""
    image = image or dockerfile.image()
    pod_security = pod.spec.get("securityContext", {})
    security = container.get("securityContext", {})
    image_uid, _, image_gid = image.user.partition(":")
    uid = int(security.get("runAsUser", pod_security.get("runAsUser", image_uid)))
    gid = int(security.get("runAsGroup", pod_security.get("runAsGroup", image_gid or uid)))
    if security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) and uid == 0:
        raise AssertionError(f"{container['name']}: runAsNonRoot with UID 0, the kubelet refuses")
    groups = [int(g) for g in pod_security.get("supplementalGroups", [])]
    if "fsGroup" in pod_security:
        groups.append(int(pod_security["fsGroup"]))

    path_map: dict[str, Path] = {k: Path(v) for k, v in image_paths.items()}
    bind_mounts: list[tuple[Path, bool]] = []
    for mount in container.get("volumeMounts", []):
        local = pod.volume_dirs[mount["name"]]
        if mount.get("subPath"):
            local = local / mount["subPath"]
        path_map[mount["mountPath"]] = local
        bind_mounts.append((local, bool(mount.get("readOnly", False))))

    ports: dict[str, int] = {}
    for port in container.get("ports", []):
        pod.port_map.setdefault(int(port["containerPort"]), free_port())
    port_map = pod.port_map
    for port in container.get("ports", []):
        if "name" in port:
            ports[port["name"]] = port_map[int(port["containerPort"])]

    env: dict[str, str] = {}
    for key, value in image.env.items():
        env[key] = _rewrite(value, path_map, port_map)
    for variable in container.get("env", []):
        if "valueFrom" in variable:
            env[variable["name"]] = downward(variable)
            continue
        assert "value" in variable, f"env {variable['name']}: only plain values are emulated"
        env[variable["name"]] = _rewrite(expand(str(variable["value"]), env), path_map, port_map)

    # Kubernetes: `command` replaces the ENTRYPOINT and drops the CMD; `args` replaces the CMD.
    command = container.get("command") or image.entrypoint
    args = container.get("args") or ([] if container.get("command") else image.cmd)
    program = [_rewrite(expand(str(a), env), path_map, port_map) for a in [*command, *args]]
    program[0] = _rewrite_path(program[0], path_map)
    assert Path(program[0]).is_file(), f"the program {program[0]} does not exist here"

    bounding, effective = _capabilities(security, uid)
    argv = _wrap(
        program,
        shared_pid=pod.shared_pid_namespace,
        uid=uid,
        gid=gid,
        groups=groups,
        bounding=bounding,
        no_new_privs=security.get("allowPrivilegeEscalation") is False,
        read_only_root=bool(security.get("readOnlyRootFilesystem")),
        bind_mounts=bind_mounts,
    )
    workdir = container.get("workingDir", image.workdir)
    cwd = Path(_rewrite_path(workdir, path_map))
    if not cwd.is_dir():
        cwd = pod.root
    return LocalContainer(
        name=container["name"],
        argv=argv,
        program=program,
        env={**env, "PATH": env.get("PATH", os.environ["PATH"]) + ":" + os.environ["PATH"]},
        cwd=cwd,
        ports=ports,
        port_map=port_map,
        path_map=path_map,
        uid=uid,
        gid=gid,
        effective_capabilities=effective,
        manifest=container,
    )


def _wrap(
    program: list[str],
    *,
    shared_pid: int | None,
    uid: int,
    gid: int,
    groups: list[int],
    bounding: frozenset[str],
    no_new_privs: bool,
    read_only_root: bool,
    bind_mounts: list[tuple[Path, bool]],
) -> list[str]:
    setpriv = require_binary("setpriv")
    caps = ",".join(["-all", *(f"+{c.lower()}" for c in sorted(bounding))])
    identity = [setpriv]
    if uid != 0:
        identity += [f"--reuid={uid}", f"--regid={gid}"]
    elif gid != 0:
        identity += [f"--regid={gid}"]
    identity += [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    identity += [f"--bounding-set={caps}", "--inh-caps=-all"]
    if no_new_privs:
        identity.append("--no-new-privs")
    identity += ["--", *program]
    unshare = require_binary("unshare")
    # /proc as the container sees it: its PID namespace's processes only.
    script = ["set -e", "mount -t proc proc /proc"]
    if read_only_root:
        for local, read_only in bind_mounts:
            quoted = shlex.quote(str(local))
            script.append(f"mount --bind {quoted} {quoted}")
            if read_only:
                script.append(f"mount -o remount,bind,ro {quoted}")
        script += [f"mount -o remount,bind,ro {shlex.quote(p)}" for p in _writable_mounts()]
    script.append("exec " + shlex.join(identity))
    shell = ["sh", "-c", "\n".join(script)]
    mount_namespace = [unshare, "--mount", "--propagation", "private", "--", *shell]
    if shared_pid is None:
        # Its own PID namespace (the program is its PID 1, as in a container).
        return [unshare, "--pid", "--fork", "--mount", "--propagation", "private", "--", *shell]
    nsenter = require_binary("nsenter")
    return [nsenter, f"--target={shared_pid}", "--pid", "--", *mount_namespace]


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60
) -> tuple[int, str]:
    """Polls url like a probe until it answers 200; fails with the process's log when the
    process exits or the time is up."""
    deadline = time.monotonic() + timeout
    last: tuple[int, str] = (0, "no answer")
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"exited with {process.returncode} before {url} answered 200:\n{log.read_text()}"
            )
        with suppress(OSError):
            last = http_get(url, timeout=2)
            if last[0] == 200:
                return last
        time.sleep(0.2)
    raise AssertionError(f"{url} never answered 200 (last: {last}):\n{log.read_text()}")


@contextmanager
def running(container: LocalContainer, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = container.start(log)
    try:
        yield process
    finally:
        stop(process)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def stop(process: subprocess.Popen[bytes], timeout: float = 20) -> int:
    """SIGTERM to the container's program, as the kubelet sends it (the namespace wrappers
    do not forward signals, they wait for it and exit with its status); SIGKILL to the
    process group after the grace period."""
    deadline = time.monotonic() + 5
    while process.poll() is None and time.monotonic() < deadline:
        children = _children(process.pid)  # none yet: the wrapper has not forked
        for child in children:
            with suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
        if children:
            break
        time.sleep(0.02)
    if process.poll() is None:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def sandbox(prefix: str) -> Path:
    """A directory every user can traverse (the containers run as other UIDs)."""
    path = Path(tempfile.mkdtemp(prefix=f"pagewarm-{prefix}-", dir="/var/tmp"))
    path.chmod(0o755)
    return path


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def load_all(text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(text) if doc]
