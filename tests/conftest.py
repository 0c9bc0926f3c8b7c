"""Shared fixtures: the component registry, loaded once per test session (it takes seconds)."""

from __future__ import annotations

import pytest

from clrun import plugin_manager


@pytest.fixture(scope="session")
def registry():
    """The process-wide registry that ``clrun.load_recipe`` and the CLI use (built-ins and entry points)."""
    return plugin_manager.default_registry()
