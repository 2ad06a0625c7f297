"""Peer apps measured beside our replica in `make bench`, each set up as its own documentation shows."""
