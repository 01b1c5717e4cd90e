"""colray: datasets into late-interaction (multivector) search indexes in Qdrant, on Ray."""

__version__ = "0.1.0"
