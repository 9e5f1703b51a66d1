"""The `heatdesk` command and its benchmarks: the top of the import graph."""
