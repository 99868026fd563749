"""Pure readers and writers of the file formats smallcell exchanges between stages.

Nothing here imports the rest of smallcell: formats are the bottom layer.
"""

from smallcell.formats.errors import FormatError

__all__ = ["FormatError"]
