"""Tests of the Python client (a package so its conftest does not shadow tests/conftest.py)."""
