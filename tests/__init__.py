"""Tests; they mirror the source tree by name (test_<module>.py)."""
