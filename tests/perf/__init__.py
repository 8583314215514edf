"""Tests of deftx.perf and the deftx bench and deftx profile commands."""
