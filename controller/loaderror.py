"""The error of the model loaders and of the safetensors header parser they share."""

from __future__ import annotations

from exporter.errors import UserError


class LoaderError(UserError):
    """The loader cannot run here (library missing, no GPU) or the files are not loadable
    (not safetensors files, a corrupt header): the message names the file and what is wrong."""
