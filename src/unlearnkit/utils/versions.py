"""Versions of the libraries a result depends on, recorded with every result."""

from __future__ import annotations

import platform
from importlib import metadata


def environment_versions() -> dict[str, str]:
    """Versions of Python, unlearnkit, torch, numpy and scikit-learn, and the platform."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("unlearnkit", "torch", "numpy", "scikit-learn"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions
