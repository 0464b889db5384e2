"""The weight set: the files that make up a model under MODEL_PATH, in the order a loader
reads them, each inode once.

Built once per scan and passed on to residency, pre-warm, eviction and metrics. It follows
symbolic links (the Hugging Face cache keeps ``snapshots/<rev>/x.safetensors`` as links to
``blobs/<sha>``), detects link and directory loops, counts hard links and duplicate links
once, and never opens anything that is not a regular file (a FIFO would block forever).
It stays on the model root's filesystem: a directory on another one (a link to /, a mount
below the root) is passed over unless asked (``cross_filesystems``), and kernel pseudo-
filesystems (/proc, whose /proc/<pid>/root is every process's root, /sys, cgroupfs...) are
never entered, nor accepted as a model root. Everything passed over is reported with its
reason. A model path that yields no weight bytes is an error, never an empty weight set
that a caller could take for "fully resident".
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import fnmatchcase
from pathlib import Path

from exporter.errors import UserError
from exporter.linux.statfs import pseudo_filesystem

DEFAULT_WEIGHT_PATTERNS: tuple[str, ...] = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")
DEFAULT_METADATA_PATTERNS: tuple[str, ...] = (
    "*.index.json",
    "config.json",
    "generation_config.json",
)
SAFETENSORS_PATTERN = "*.safetensors"


class FileRole(StrEnum):
    METADATA = "metadata"
    WEIGHTS = "weights"


class SkipReason(StrEnum):
    NOT_REGULAR = "not_regular_file"  # FIFO, socket, device: never opened
    LINK_LOOP = "link_loop"
    BROKEN_LINK = "broken_link"
    DIRECTORY_LOOP = "directory_loop"
    PERMISSION_DENIED = "permission_denied"
    DUPLICATE = "duplicate_inode"  # a hard link or second link to a file already counted
    OTHER_FORMAT = "other_format"  # .bin/.pt beside safetensors: loaders take safetensors
    VANISHED = "vanished"  # gone between listing and stat
    OTHER_FILESYSTEM = "other_filesystem"  # a directory off the root's filesystem, not asked
    PSEUDO_FILESYSTEM = "pseudo_filesystem"  # procfs, sysfs...: kernel state, never read


# File names an error message shows at most ("a, b, c and 7 more").
_NAMES_IN_A_MESSAGE = 3


class ModelPathError(UserError):
    """MODEL_PATH cannot be used at all (missing, not a directory or regular file, on a
    pseudo-filesystem, or without weight files)."""


class EmptyWeightSetError(ModelPathError):
    """MODEL_PATH holds no weight file with data: nothing to measure, warm or evict."""


@dataclass(frozen=True, slots=True)
class WeightFile:
    path: Path  # as found under the model root: the name users recognise
    real_path: Path  # after following links (blobs/<sha> in a Hugging Face cache)
    size: int
    device: int
    inode: int
    role: FileRole
    # When it was found: with device, inode and size, the identity a later reader (a warm
    # that reaches this file minutes later) compares against the file it opens.
    mtime_ns: int = 0


@dataclass(frozen=True, slots=True)
class Skipped:
    path: Path
    reason: SkipReason
    detail: str


@dataclass(frozen=True, slots=True)
class WeightSet:
    root: Path
    files: tuple[WeightFile, ...]  # in load order: metadata first, then shards
    skipped: tuple[Skipped, ...] = field(default=())
    # Every directory the scan listed (root first); empty for a single-file model. A
    # directory's ctime changes whenever an entry is added, removed or renamed in it.
    directories: tuple[Path, ...] = field(default=())
    # Each file's path as a str, in ``files``' order: residency opens every file on every
    # collection, and a Path's conversion costs a tenth of that open (a str is taken as is).
    path_strings: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path_strings", tuple([str(f.path) for f in self.files]))

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def weight_files(self) -> tuple[WeightFile, ...]:
        return tuple(f for f in self.files if f.role is FileRole.WEIGHTS)

    def display_name(self, file: WeightFile) -> str:
        """The file's path relative to the model root (its own name for a single file)."""
        if file.path == self.root:
            return file.path.name
        try:
            return str(file.path.relative_to(self.root))
        except ValueError:
            return str(file.path)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def resolve_model_root(path: Path) -> Path:
    """A Hugging Face cache entry (``models--org--name``) resolves to the snapshot that
    ``refs/main`` names, or the newest snapshot; any other path is returned as is."""
    snapshots = path / "snapshots"
    if not snapshots.is_dir():
        return path
    ref = path / "refs" / "main"
    try:
        revision = ref.read_text().strip()
        if (snapshots / revision).is_dir():
            return snapshots / revision
    except OSError:
        pass
    candidates = [p for p in snapshots.iterdir() if p.is_dir()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else path


def model_name_for_path(path: str | os.PathLike[str]) -> str:
    """The name a model goes by in metrics and samples when none is given:
    ``models--meta-llama--Llama-3.1-8B`` (a Hugging Face cache entry, or one of its
    snapshots) -> ``meta-llama/Llama-3.1-8B``; any other path -> its last component."""
    parts = Path(path).absolute().parts
    for part in reversed(parts):
        if part.startswith(("models--", "datasets--")):
            return part.split("--", 1)[1].replace("--", "/")
    name = Path(path).absolute().name
    return name.removesuffix(".safetensors") or "model"


class _Walker:
    def __init__(
        self,
        weight_patterns: tuple[str, ...],
        metadata_patterns: tuple[str, ...],
        root_device: int,
        *,
        cross_filesystems: bool = False,
    ):
        self.weight_patterns = weight_patterns
        self.metadata_patterns = metadata_patterns
        self.root_device = root_device
        self.cross_filesystems = cross_filesystems
        self.found: list[WeightFile] = []
        self.skipped: list[Skipped] = []
        self.unmatched: list[str] = []  # a few names that matched no pattern
        self.unmatched_count = 0
        self._inodes: dict[tuple[int, int], Path] = {}
        self._real_dirs: dict[str, Path] = {}
        # st_dev -> the pseudo-filesystem it is, or None: one statfs per device a walk meets.
        self._pseudo: dict[int, str | None] = {}
        self.directories: list[Path] = []

    def skip(self, path: Path, reason: SkipReason, detail: str) -> None:
        self.skipped.append(Skipped(path, reason, detail))

    def role_of(self, name: str) -> FileRole | None:
        if _matches(name, self.metadata_patterns):
            return FileRole.METADATA
        if _matches(name, self.weight_patterns):
            return FileRole.WEIGHTS
        return None

    def pseudo(self, path: Path | str, device: int) -> str | None:
        """The pseudo-filesystem holding ``path``, if it is on one (None on the root's)."""
        if device == self.root_device:
            return None
        if device not in self._pseudo:
            self._pseudo[device] = pseudo_filesystem(path, device)
        return self._pseudo[device]

    def walk(self, root: Path, root_stat: os.stat_result) -> None:
        visited = {(root_stat.st_dev, root_stat.st_ino)}
        ancestors = _ancestors(root)
        pending = [root]
        while pending:
            directory = pending.pop()
            self.directories.append(directory)
            for entry in self._list(directory):
                subdir = self._as_directory(entry, visited, ancestors)
                if subdir is not None:
                    pending.append(subdir)
                elif (role := self.role_of(entry.name)) is not None:
                    self.add(Path(entry.path), role, entry)
                else:
                    self._note_unmatched(entry)

    def _note_unmatched(self, entry: os.DirEntry[str]) -> None:
        self.unmatched_count += 1
        if len(self.unmatched) < _NAMES_IN_A_MESSAGE:
            self.unmatched.append(entry.name)

    def _list(self, directory: Path) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(directory) as it:
                return sorted(it, key=lambda e: e.name, reverse=True)
        except PermissionError as exc:
            self.skip(directory, SkipReason.PERMISSION_DENIED, f"cannot list directory: {exc}")
        except FileNotFoundError:
            self.skip(directory, SkipReason.VANISHED, "directory vanished while scanning")
        return []

    def _as_directory(
        self,
        entry: os.DirEntry[str],
        visited: set[tuple[int, int]],
        ancestors: dict[tuple[int, int], Path],
    ) -> Path | None:
        try:
            if not entry.is_dir(follow_symlinks=True):
                return None
            st = entry.stat(follow_symlinks=True)
        except OSError:
            return None
        path = Path(entry.path)
        key = (st.st_dev, st.st_ino)
        if key in visited:
            self.skip(path, SkipReason.DIRECTORY_LOOP, "directory already visited")
            return None
        if key in ancestors:
            # find -L's rule: a link to a directory above the root would walk its siblings.
            self.skip(path, SkipReason.DIRECTORY_LOOP, f"{ancestors[key]} holds the model root")
            return None
        if not self._may_enter(path, st.st_dev):
            return None
        visited.add(key)
        return path

    def _may_enter(self, path: Path, device: int) -> bool:
        if device == self.root_device:
            return True
        if (kind := self.pseudo(path, device)) is not None:
            self.skip(path, SkipReason.PSEUDO_FILESYSTEM, f"{kind}: kernel state, not storage")
            return False
        if not self.cross_filesystems:
            self.skip(
                path,
                SkipReason.OTHER_FILESYSTEM,
                f"on another filesystem than the model root (device "
                f"{os.major(device)}:{os.minor(device)}); PAGEWARM_CROSS_FILESYSTEMS=true "
                "follows it",
            )
            return False
        return True

    def add(self, path: Path, role: FileRole, entry: os.DirEntry[str] | None = None) -> None:
        try:
            # Follows links; never opens the file. The DirEntry spares pathlib's overhead.
            st = entry.stat() if entry is not None else path.stat()
        except OSError as exc:
            self._skip_unstatable(path, exc)
            return
        if not stat.S_ISREG(st.st_mode):
            self.skip(path, SkipReason.NOT_REGULAR, f"{_file_type(st.st_mode)}, not opened")
            return
        # A link to a file elsewhere is followed (blobs on another disk), into /proc never:
        # /proc/kcore is a "regular file" of 128 TiB.
        if (kind := self.pseudo(path, st.st_dev)) is not None:
            self.skip(path, SkipReason.PSEUDO_FILESYSTEM, f"{kind}: kernel state, not storage")
            return
        key = (st.st_dev, st.st_ino)
        if key in self._inodes:
            self.skip(path, SkipReason.DUPLICATE, f"same file as {self._inodes[key]}")
            return
        self._inodes[key] = path
        real = self._real_path(path, entry)
        self.found.append(
            WeightFile(path, real, st.st_size, st.st_dev, st.st_ino, role, st.st_mtime_ns)
        )

    def _real_path(self, path: Path, entry: os.DirEntry[str] | None) -> Path:
        # realpath costs an lstat per path component, per file. A file that is not a link
        # lives at its directory's real path: that is resolved once per directory.
        if entry is None or entry.is_symlink():
            return Path(os.path.realpath(path))
        parent = os.path.dirname(entry.path)  # noqa: PTH120 - a str key: pathlib costs more
        real_parent = self._real_dirs.get(parent)
        if real_parent is None:
            real_parent = self._real_dirs[parent] = Path(os.path.realpath(parent))
        return real_parent / entry.name

    def _skip_unstatable(self, path: Path, exc: OSError) -> None:
        if exc.errno == errno.ELOOP:
            self.skip(path, SkipReason.LINK_LOOP, "symbolic link loop")
        elif exc.errno == errno.ENOENT and path.is_symlink():
            self.skip(path, SkipReason.BROKEN_LINK, f"link target missing: {path.readlink()}")
        elif exc.errno in (errno.EACCES, errno.EPERM):
            self.skip(path, SkipReason.PERMISSION_DENIED, str(exc))
        else:
            self.skip(path, SkipReason.VANISHED, str(exc))


def _ancestors(root: Path) -> dict[tuple[int, int], Path]:
    """(st_dev, st_ino) of every directory above the root's real path, up to /."""
    found: dict[tuple[int, int], Path] = {}
    for parent in Path(os.path.realpath(root)).parents:
        try:
            st = parent.stat()
        except OSError:
            continue
        found[(st.st_dev, st.st_ino)] = parent
    return found


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "directory"),
    ):
        if test(mode):
            return name
    return "special file"


def _index_order(files: list[WeightFile]) -> dict[str, int]:
    """Shard name -> position of its first tensor in the index JSON's weight_map."""
    order: dict[str, int] = {}
    for meta in files:
        if not meta.path.name.endswith(".index.json"):
            continue
        try:
            weight_map = json.loads(meta.path.read_text()).get("weight_map", {})
        except (OSError, ValueError, AttributeError):
            continue
        for shard in weight_map.values() if isinstance(weight_map, dict) else ():
            order.setdefault(str(shard), len(order))
    return order


def _load_order(files: list[WeightFile]) -> list[WeightFile]:
    index = _index_order(files)

    def key(f: WeightFile) -> tuple[int, int, str]:
        role_rank = 0 if f.role is FileRole.METADATA else 1
        return role_rank, index.get(f.path.name, len(index)), str(f.path)

    return sorted(files, key=key)


def _drop_other_formats(walker: _Walker) -> None:
    """Loaders take safetensors when a checkpoint has them (vLLM, transformers): the .bin
    or .pth copies beside them would double what is warmed, so they are left out."""
    weights = [f for f in walker.found if f.role is FileRole.WEIGHTS]
    if not any(fnmatchcase(f.path.name, SAFETENSORS_PATTERN) for f in weights):
        return
    for f in weights:
        if not fnmatchcase(f.path.name, SAFETENSORS_PATTERN):
            walker.found.remove(f)
            walker.skip(f.path, SkipReason.OTHER_FORMAT, "safetensors shards are present")


def discover(
    model_path: str | os.PathLike[str],
    weight_patterns: Iterable[str] = DEFAULT_WEIGHT_PATTERNS,
    metadata_patterns: Iterable[str] = DEFAULT_METADATA_PATTERNS,
    *,
    prefer_safetensors: bool = True,
    cross_filesystems: bool = False,
) -> WeightSet:
    """Find the weight set under ``model_path`` (a directory or a single file).

    Raises ``ModelPathError`` when the path cannot be a model: missing, unreadable, neither
    a directory nor a regular file, on a pseudo-filesystem, or holding no weight bytes
    (``EmptyWeightSetError``)."""
    path = Path(model_path)
    st = _stat_model_path(path, path)
    if stat.S_ISREG(st.st_mode):
        root, root_stat = path, st
    elif stat.S_ISDIR(st.st_mode):
        try:
            root = resolve_model_root(path)
        except OSError as exc:
            raise ModelPathError(f"model path {path} cannot be read: {exc.strerror}") from None
        root_stat = _stat_model_path(root, path)
    else:
        raise ModelPathError(
            f"model path {path} is a {_file_type(st.st_mode)}, not a directory or a file"
        )
    if (kind := pseudo_filesystem(root, root_stat.st_dev)) is not None:
        raise ModelPathError(
            f"model path {path} is on {kind}, a kernel pseudo-filesystem, not model storage"
        )
    patterns = tuple(weight_patterns)
    walker = _Walker(
        patterns, tuple(metadata_patterns), root_stat.st_dev, cross_filesystems=cross_filesystems
    )
    if stat.S_ISREG(root_stat.st_mode):
        walker.add(path, walker.role_of(path.name) or FileRole.WEIGHTS)
        weight_set = WeightSet(path, tuple(walker.found), tuple(walker.skipped))
    else:
        walker.walk(root, root_stat)
        if prefer_safetensors:
            _drop_other_formats(walker)
        weight_set = WeightSet(
            root,
            tuple(_load_order(walker.found)),
            tuple(walker.skipped),
            tuple(walker.directories),
        )
    _require_weight_bytes(path, weight_set, walker, patterns)
    return weight_set


def _stat_model_path(path: Path, given: Path) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        raise ModelPathError(f"model path {given} does not exist") from None
    except OSError as exc:
        raise ModelPathError(f"model path {given} cannot be read: {exc.strerror}") from None


def _require_weight_bytes(
    path: Path, weight_set: WeightSet, walker: _Walker, patterns: tuple[str, ...]
) -> None:
    """An empty weight set would measure as "0 of 0 bytes": 100% resident, warmed in no
    time. Whatever the cause (a download not started, patterns that match nothing, only
    FIFOs or dead links), it is an error that says what was looked for and what was found."""
    weights = weight_set.weight_files
    if any(f.size for f in weights):
        return
    if weights and weight_set.root == weights[0].path:  # a single-file model
        raise EmptyWeightSetError(f"model path {path} is an empty file (0 bytes)")
    if weights:
        names = [weight_set.display_name(f) for f in weights]
        raise EmptyWeightSetError(
            f"the weight files under {path} are all empty (0 bytes): {_examples(names)}"
        )
    found = []
    if metadata := [weight_set.display_name(f) for f in weight_set.files]:
        found.append(f"{_count(len(metadata), 'metadata file')}: {_examples(metadata)}")
    if weight_set.skipped:
        first = weight_set.skipped[0]
        found.append(
            f"{len(weight_set.skipped)} skipped, e.g. {first.path.name} ({first.reason}: "
            f"{first.detail})"
        )
    if walker.unmatched_count:
        found.append(
            f"{walker.unmatched_count} matching no pattern: "
            + _examples(walker.unmatched, walker.unmatched_count)
        )
    raise EmptyWeightSetError(
        f"no weight files under {path} (looked for {', '.join(patterns) or 'no pattern'}; "
        f"found {'; '.join(found) or 'nothing'})"
    )


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _examples(names: list[str], total: int | None = None) -> str:
    """``a, b, c and 7 more``: a message names a few files, not thousands."""
    total = len(names) if total is None else total
    shown = names[:_NAMES_IN_A_MESSAGE]
    more = total - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")
