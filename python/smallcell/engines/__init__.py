"""Adapters, one per external program, each behind a small interface."""
