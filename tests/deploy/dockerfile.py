"""A reader of the Dockerfile (no Docker engine runs here): instructions per stage, ARG and
ENV substitution, and the image's runtime configuration (ENTRYPOINT, CMD, ENV, USER,
WORKDIR) that the kubelet emulation starts containers with."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from tests.support import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
# What python:*-slim images set before our instructions run.
BASE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    arguments: str  # continuation lines joined, comments removed

    def flags_and_rest(self) -> tuple[dict[str, str], str]:
        """`RUN --mount=a=b,c=d cmd` -> ({"mount": "a=b,c=d"}, "cmd")."""
        flags: dict[str, str] = {}
        rest = self.arguments
        while match := re.match(r"--([\w-]+)=(\S+)\s+", rest):
            flags[match.group(1)] = match.group(2)
            rest = rest[match.end() :]
        return flags, rest

    def exec_form(self) -> list[str]:
        value = json.loads(self.arguments)
        assert isinstance(value, list), f"{self.keyword} must be in exec form: {self.arguments}"
        return [str(v) for v in value]

    def pairs(self) -> list[tuple[str, str]]:
        """ENV/LABEL/ARG key=value pairs (quoted values allowed)."""
        out = []
        for token in shlex.split(self.arguments):
            key, sep, value = token.partition("=")
            out.append((key, value if sep else ""))
        return out


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]
    directives: dict[str, str]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def substitute(text: str, variables: dict[str, str]) -> str:
    return _VARIABLE.sub(lambda m: variables.get(m.group(1) or m.group(2), ""), text)


def logical_lines(text: str) -> tuple[dict[str, str], list[str]]:
    """Parser directives, then instructions with continuations joined and comments dropped."""
    directives: dict[str, str] = {}
    lines = text.splitlines()
    for line in lines:
        match = re.match(r"^#\s*(\w+)\s*=\s*(\S+)\s*$", line)
        if not match:
            break
        directives[match.group(1).lower()] = match.group(2)
    out: list[str] = []
    current = ""
    for raw in lines:
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            out.append(current.strip())
        current = ""
    if current.strip():
        out.append(current.strip())
    return directives, out


def parse(path: Path = DOCKERFILE) -> Dockerfile:
    directives, lines = logical_lines(path.read_text())
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, arguments = line.partition(" ")
        instruction = Instruction(keyword.upper(), " ".join(arguments.split()))
        if instruction.keyword == "FROM":
            words = substitute(instruction.arguments, global_args).split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages:
            assert instruction.keyword == "ARG", f"only ARG may precede FROM: {line}"
            global_args.update(instruction.pairs())
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(global_args, stages, directives)


def stage_env(stage: Stage, global_args: dict[str, str]) -> dict[str, str]:
    """The environment a stage's last instruction sees: ENV (and ARG) in order."""
    variables = {"PATH": BASE_PATH}
    args = dict(global_args)
    env: dict[str, str] = {"PATH": BASE_PATH}
    for instruction in stage.instructions:
        if instruction.keyword == "ARG":
            for key, value in instruction.pairs():
                args[key] = value or args.get(key, "")
        if instruction.keyword == "ENV":
            for key, value in instruction.pairs():
                resolved = substitute(value, {**args, **variables})
                variables[key] = env[key] = resolved
    return env


@dataclass(frozen=True)
class Image:
    """The runtime configuration of the final stage, as a container runtime reads it."""

    entrypoint: list[str]
    cmd: list[str]
    env: dict[str, str]
    user: str
    workdir: str
    volumes: list[str]
    labels: dict[str, str]


def image(dockerfile: Dockerfile | None = None) -> Image:
    parsed = dockerfile or parse()
    final = parsed.final
    entrypoint, cmd, user, workdir = final.last("ENTRYPOINT"), final.last("CMD"), None, "/"
    for instruction in final.instructions:
        if instruction.keyword == "USER":
            user = instruction.arguments
        if instruction.keyword == "WORKDIR":
            workdir = instruction.arguments
    volumes = [v for i in final.all("VOLUME") for v in json.loads(i.arguments)]
    labels: dict[str, str] = {}
    for instruction in final.all("LABEL"):
        labels.update(instruction.pairs())
    return Image(
        entrypoint=entrypoint.exec_form() if entrypoint else [],
        cmd=cmd.exec_form() if cmd else [],
        env=stage_env(final, parsed.global_args),
        user=user or "0",
        workdir=workdir,
        volumes=volumes,
        labels=labels,
    )


def build_context(root: Path = REPO) -> list[Path]:
    """The files `docker build` sends, by the .dockerignore rules (the last match wins;
    a pattern also matches everything below a matched directory)."""
    rules: list[tuple[bool, str]] = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        rules.append((keep, pattern))

    def excluded(relative: str) -> bool:
        parts = relative.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for keep, pattern in rules:
            if any(_match(pattern, prefix) for prefix in prefixes):
                result = not keep
        return result

    files = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if relative.startswith(".git/") or not path.is_file():
            continue
        if not excluded(relative):
            files.append(path)
    return files


def _match(pattern: str, path: str) -> bool:
    """Go filepath.Match semantics plus `**` (any number of directories)."""
    if pattern.startswith("**/"):
        rest = pattern[3:]
        parts = path.split("/")
        return any(_match(rest, "/".join(parts[n:])) for n in range(len(parts)))
    if pattern.count("/") != path.count("/"):
        return False
    return all(fnmatchcase(p, q) for p, q in zip(path.split("/"), pattern.split("/"), strict=True))
