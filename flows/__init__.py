"""Prefect flows that orchestrate the memlm stages, and the `memlm` command line."""
