"""Placeholder: verbs are added by their owners."""

from astra_driver.cli import app  # noqa: F401
