"""The controller's shape, kept by a test: no module grows past what one reader can hold
(the import layers are kept by import-linter, `make contracts`)."""

from __future__ import annotations

from tests.support import REPO

MAX_MODULE_LINES = 450


def test_no_controller_module_is_longer_than_the_ceiling() -> None:
    modules = sorted((REPO / "controller").rglob("*.py"))
    assert len(modules) > 40  # the walk found the package, subpackages included
    lines = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in modules}
    too_long = {name: n for name, n in lines.items() if n > MAX_MODULE_LINES}
    assert not too_long, f"split these along their sections: {too_long}"
