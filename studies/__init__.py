"""Runnable studies: ``python -m studies.<name>``; ``python -m studies`` lists them."""
