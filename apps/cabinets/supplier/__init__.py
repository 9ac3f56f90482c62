"""The supplier cabinet."""
