"""Tests of deftx.bench and the deftx bench command."""
