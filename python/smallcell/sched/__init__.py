"""Schedulers: run stages by name; they know nothing of engines."""
