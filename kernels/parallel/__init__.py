"""The parallel form of the metadata sweeps: the schedule, and the plain setup sweep."""
