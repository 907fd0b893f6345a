"""Benchmark tasks shipped with banel_trl, small enough to run offline on a CPU (used by `banel-trl demo`)."""
