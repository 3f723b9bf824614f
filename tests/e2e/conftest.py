"""End-to-end fixtures live in tests/conftest.py (one Label Studio server per session, shared with the
browser suite)."""
