"""Experiments that test claims of the papers behind the project with its own training and evaluation tools."""
