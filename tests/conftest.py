"""Fixtures shared by the tests (a test module may define its own `server` to script replies)."""
from typing import Iterator

import pytest

from loopback_server import LoopbackServer


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    """A plain loopback OpenAI-compatible server (no scripted replies, no latency)."""
    with LoopbackServer() as srv:
        yield srv
