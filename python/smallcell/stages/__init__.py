"""Stages of one iteration: explore, select, label, collect, train."""
