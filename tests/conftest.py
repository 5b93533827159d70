"""Fixtures shared by the test modules that start a real server; the golden files' review."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from tests.servers import Certs, make_certs

# Generated tests judge what is generated, never how fast: no per-example deadline and no
# "too slow" health check, which a machine loaded by other runs would trip at random.
settings.register_profile("unhurried", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("unhurried")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA and a serving certificate for localhost/127.0.0.1, one set per module."""
    return make_certs(tmp_path_factory.mktemp("certs"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        help="deeper generated runs (the API server judges 4,000 generated pods per flavour)",
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """With UPDATE_GOLDEN=1: the diff of every golden file rewritten, to be reviewed."""
    from tests.support import REWRITTEN, UPDATE

    if not UPDATE:
        return
    terminalreporter.section(f"golden files rewritten: {len(REWRITTEN)} (review each diff)")
    for _, diff in REWRITTEN:
        terminalreporter.write(diff if diff.endswith("\n") else diff + "\n")
