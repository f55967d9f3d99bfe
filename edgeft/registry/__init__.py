"""Versions in production: the registry's store, its index, the promotion comparison, routing and views."""
