"""Builtin tasks, one module each (registered through entry points)."""
