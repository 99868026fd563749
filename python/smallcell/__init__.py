"""smallcell: active learning of moment tensor potentials on small cells."""

__version__ = "0.1.0"
