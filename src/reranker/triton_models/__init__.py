"""Implementations of the Triton Python-backend models; each ``model.py`` imports one."""
