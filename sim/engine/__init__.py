"""Replica engine: requests, the decode set, and the continuous-batching replica process."""
