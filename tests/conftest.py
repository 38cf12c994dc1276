"""The suite's plugins: the shared stack (``tests/plugins/stack.py``: the export, Triton, the API,
PostgreSQL, S3), and the figures tests measured, printed at the end of the run."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.plugins.stack"]

FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES:
        terminalreporter.section("measured figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def report():
    """Tests append the figures they measured; they are printed at the end of the run."""
    return FIGURES.append
