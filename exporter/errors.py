"""The one base class for mistakes a user can fix.

Every layer raises its own subclass (a bad MODEL_PATH, a bad flag, a corrupt weight file, an
unusable sample store); ``controller.cli.main`` catches ``UserError`` once and prints one line
with exit status 2, never a traceback (unless ``--debug``). It lives in ``exporter`` because
both packages raise it and ``exporter`` never imports ``controller``.
"""

from __future__ import annotations


class UserError(Exception):
    """Input the user can fix: printed as one line, exit status 2, no traceback."""
