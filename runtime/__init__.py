"""edgescreen's torch-free runtime: card, preprocessing, quality gate, metrics, backends, screening.

Importing this package must never import torch: it is all a Jetson gets.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("edgescreen")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
