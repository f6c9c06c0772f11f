"""Shared test configuration.  The ``rookery_server`` fixtures come from the ``rookery.testing`` plugin."""

pytest_plugins: list[str] = []
