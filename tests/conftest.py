"""Shared fixtures: the anyio backend, a config with its own home under tmp_path, and an open app."""
from __future__ import annotations

import pytest

from metaclaw_mcp.app import open_app
from metaclaw_mcp.config import MetaClawConfig, load_config


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def config(tmp_path) -> MetaClawConfig:
    return load_config(home=tmp_path / "home")


@pytest.fixture
async def app(config):
    async with open_app(config) as app:
        yield app
