"""`llmship` commands for the kserve area. Registered on the main app by flows.cli."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the llmship app."""
