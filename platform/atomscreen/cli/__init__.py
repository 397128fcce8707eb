"""The `platform` command: one module per command group; each command parses, calls one function, renders."""

from atomscreen.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
