"""The operator cabinet."""
