"""The company cabinet."""
