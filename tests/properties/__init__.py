"""Property tests: the engine against a reference (model, unfused passes, serial run)."""
