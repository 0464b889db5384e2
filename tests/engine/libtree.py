"""A synthetic "site-packages" that an engine really imports and maps: the CPU stand-in for
torch + transformers, on the same disk as the weights.

Sized like ``import torch`` of the CPU build measured on these VMs (torch 2.13.0+cpu in a
virtual environment whose site-packages holds 47k files, 1.19 GiB): a cold import read
264 MiB in 859 files, 814 of them .pyc, 185 MiB of it from libtorch_cpu.so (414 MiB). The
default tree: 1,200 imported modules (about 8 KiB of bytecode each, some 10 MiB), 600
modules never imported (they must stay out of a profile), and three shared objects of
96 MiB of which the "dynamic loader" touches 40% of the pages in a scattered order:
1:1 to the CPU build's import, about 1:8 of a CUDA build's start-up (torch's CUDA wheels
bring 3-4 GB of shared objects: cuDNN 1.2 GB, cuBLAS 670 MB; pytorch/builder#1371,
IBM/text-generation-inference#50).

Modules are real Python, compiled to __pycache__ (so an import reads the .pyc, as in an
installed package); each one does a little work at import (a table folded into a dict).
Each package is an installed distribution (``<package>-1.0.dist-info`` with a RECORD of
its files) and carries headers that nothing reads, as torch's include/ does: the engine
calls ``importlib.metadata.packages_distributions()``, as transformers does on import,
which looks up every file each RECORD lists.
The shared objects are incompressible random bytes. ``manifest.json`` says what to import
and map, in which order (packages in a seeded, not alphabetical, order).
"""

from __future__ import annotations

import compileall
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

MiB = 1 << 20
MANIFEST = "engine_manifest.json"


@dataclass(frozen=True, slots=True)
class TreeShape:
    packages: int = 60
    modules_per_package: int = 20
    unused_packages: int = 30
    table_entries: int = 1500  # ~8 KiB of bytecode a module
    shared_objects: int = 3
    shared_object_bytes: int = 96 * MiB
    touched_fraction: float = 0.4
    headers_per_package: int = 20  # listed in RECORD, looked up, never read
    seed: int = 15

    def scaled(self, factor: float) -> TreeShape:
        return TreeShape(
            packages=max(2, round(self.packages * factor)),
            modules_per_package=self.modules_per_package,
            unused_packages=max(1, round(self.unused_packages * factor)),
            table_entries=self.table_entries,
            shared_objects=self.shared_objects,
            shared_object_bytes=max(MiB, round(self.shared_object_bytes * factor) // MiB * MiB),
            touched_fraction=self.touched_fraction,
            headers_per_package=self.headers_per_package,
            seed=self.seed,
        )


@dataclass(frozen=True, slots=True)
class Tree:
    site_packages: Path
    import_order: tuple[str, ...]  # top-level packages, in the order the engine imports them
    modules: tuple[str, ...]  # every imported module (package.module), in import order
    unused: tuple[str, ...]  # packages that are never imported
    shared_objects: tuple[str, ...]  # paths relative to site_packages
    shape: TreeShape


def _module_source(name: str, index: int, entries: int) -> str:
    rng = random.Random(f"{name}:{index}")  # noqa: S311 - test data, no secret
    table = ", ".join(str(rng.randrange(1 << 30)) for _ in range(entries))
    return f'''"""Synthetic module {name} (pagewarm's engine stand-in)."""

TABLE = ({table},)
INDEX = {{value: position for position, value in enumerate(TABLE)}}


class Layer{index}:
    def __init__(self, scale: int = {index + 1}) -> None:
        self.scale = scale

    def forward(self, values: list[int]) -> list[int]:
        return [value * self.scale % 65521 for value in values]


def checksum() -> int:
    return sum(TABLE) % 1000003
'''


def build(path: Path, shape: TreeShape | None = None) -> Tree:
    """Write the tree under ``path/site-packages`` (existing files are replaced)."""
    shape = shape or TreeShape()
    site = path / "site-packages"
    site.mkdir(parents=True, exist_ok=True)
    rng = random.Random(shape.seed)  # noqa: S311 - test data, no secret
    names = [f"synth_{i:03d}" for i in range(shape.packages + shape.unused_packages)]
    used, unused = names[: shape.packages], names[shape.packages :]
    modules: list[str] = []
    order = used[:]
    rng.shuffle(order)
    for package in names:
        directory = site / package
        directory.mkdir(exist_ok=True)
        members = [f"mod_{j:02d}" for j in range(shape.modules_per_package)]
        imports = "".join(f"from {package} import {m}\n" for m in members)
        (directory / "__init__.py").write_text(f'"""Package {package}."""\n{imports}')
        for j, member in enumerate(members):
            source = _module_source(f"{package}.{member}", j, shape.table_entries)
            (directory / f"{member}.py").write_text(source)
        for h in range(shape.headers_per_package):
            header = directory / "include" / f"{package}_{h:02d}.h"
            header.parent.mkdir(exist_ok=True)
            header.write_text(f"#pragma once\n#define {package.upper()}_{h} {h}\n")
    for package in order:
        modules += [f"{package}.mod_{j:02d}" for j in range(shape.modules_per_package)]
    shared = []
    for k in range(shape.shared_objects):
        relative = f"{order[k % len(order)]}/lib/libsynth_{k}.so"
        _write_random(site / relative, shape.shared_object_bytes, rng)
        shared.append(relative)
    compileall.compile_dir(site, quiet=1, workers=1)
    for package in names:
        _dist_info(site, package)
    tree = Tree(site, tuple(order), tuple(modules), tuple(unused), tuple(shared), shape)
    manifest = {**asdict(tree), "site_packages": str(site), "shape": asdict(shape)}
    (site / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    _sync(site)
    return tree


def _dist_info(site: Path, package: str) -> None:
    """``package`` as an installed distribution: METADATA, and a RECORD of every file
    (no top_level.txt, as most wheels: packages_distributions() infers it from RECORD)."""
    dist_info = site / f"{package}-1.0.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")
    listed = sorted(p for p in (site / package).rglob("*") if p.is_file())
    rows = [f"{p.relative_to(site)},," for p in listed]
    rows += [f"{dist_info.name}/METADATA,,", f"{dist_info.name}/RECORD,,"]
    (dist_info / "RECORD").write_text("\n".join(rows) + "\n")


def _write_random(path: Path, size: int, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = rng.randbytes(MiB)
    with path.open("wb") as out:
        for index in range(size // MiB):
            # Unique per MiB (incompressible, not deduplicable), cheap to generate.
            out.write(index.to_bytes(8, "little") + block[8:])


def _sync(site: Path) -> None:
    """Flush the tree, so that eviction later drops clean pages (dirty ones would stay)."""
    os.sync()


def load(site_packages: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((site_packages / MANIFEST).read_text())
    return loaded


def files(site_packages: Path) -> list[Path]:
    """Every regular file of the tree (for eviction and residency checks)."""
    return sorted(p for p in site_packages.rglob("*") if p.is_file() and not p.is_symlink())
