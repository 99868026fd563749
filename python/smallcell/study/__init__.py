"""The study around a run: metrics, figures, reports."""
