"""Lightning callbacks of lit-eraser."""

from callbacks.unlearn import UnlearnCallback, UnlearnOutcome

__all__ = ["UnlearnCallback", "UnlearnOutcome"]
