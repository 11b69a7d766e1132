"""The test suite: unit/, scenarios/, properties/, interfaces/ (see README.md)."""
