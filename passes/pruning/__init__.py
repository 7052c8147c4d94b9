"""Structured channel pruning: the channel dependency graph (``depgraph``) and physical shrinking (``shrink``)."""
