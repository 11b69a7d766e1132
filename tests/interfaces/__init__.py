"""Interface tests: the command line, the embedding surface (compiled level) and examples/."""
