"""The PostgreSQL schema per test (tests/pgfixture.py)."""

from tests.pgfixture import pg  # noqa: F401 - the fixture
