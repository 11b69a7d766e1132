"""The slow, independent Python model of migrate_vma() that the property tests compare against."""
