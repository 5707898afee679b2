"""The benchmark: how fast syncengine is, against what (bench/README.md)."""
