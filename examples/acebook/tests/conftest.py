"""Fixtures for acebook's tests (the helpers live in acebook_harness.py)."""

from acebook_harness import app, database_url, launch

__all__ = ["app", "database_url", "launch"]
