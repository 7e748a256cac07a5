"""Where the grammar and the templates live: beside the package in a checkout, or as package data."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def resource_dir(name: str) -> Path:
    """`grammar` or `templates`: the repository's folder in a checkout, else the installed package data."""
    repo = Path(__file__).resolve().parent.parent / name
    if repo.is_dir():
        return repo
    return Path(str(resources.files(f"mirasc.{name}")))
