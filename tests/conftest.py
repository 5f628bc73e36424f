"""Shared fixtures. PostgreSQL is real (embedded server per test session, or BATCH_TEST_ADMIN_DSN)."""

pytest_plugins = ["tests.fixtures.pg", "tests.fixtures.sandbox"]
