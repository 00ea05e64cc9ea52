"""The bad-input corpus, built by code (see build.py)."""
