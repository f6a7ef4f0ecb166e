"""The Triton Python-backend models; each generated ``model.py`` imports one of them."""
