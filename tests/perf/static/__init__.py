"""Tests of deftx.perf.static: compiling the kernels for GPU targets, SASS and occupancy."""
