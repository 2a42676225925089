"""memz: a small language model that keeps learning, and proves what it forgot."""

__version__ = "0.1.0"
