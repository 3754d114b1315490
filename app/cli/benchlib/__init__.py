"""Pieces of ``python -m app.cli.bench``: timing, model paths, peers, the HTTP service, the report."""
