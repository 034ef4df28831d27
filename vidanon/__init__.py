"""vidanon: reversible, key-conditioned face anonymization for CCTV video."""

__version__ = "0.1.0"
