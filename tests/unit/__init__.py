"""Unit tests: one compiled piece at a time (layout, copy engine, each pass)."""
