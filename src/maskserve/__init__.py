"""maskserve: SAM 2 segmentation and extraction served through Triton."""

__version__ = "0.1.0"
