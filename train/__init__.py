"""Lean Lightning trainers for eight SSL methods, with and without HEX."""
