"""atomscreen: database-backed high-throughput screening of molecules and crystals."""

__version__ = "0.1.0"
