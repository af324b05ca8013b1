"""Test support: stand-ins and helpers shared by the test suite and the benchmark."""
