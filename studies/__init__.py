"""Runnable studies: ``python -m studies.<name>`` (convergence, meanfield, timing, train)."""
