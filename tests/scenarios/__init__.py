"""Scenario tests: one per migrate_vma() branch or hmm selftest, through the public API."""
