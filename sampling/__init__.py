"""The posterior-sampling loop (:func:`sample`) and the per-step record (:class:`Step`) that it
hands to a method's ``step(step, y, physics) -> x_{t-1}``; see docs/framework.md."""
from .loop import SampleResult, sample
from .step import NFECounter, Step, make_step

__all__ = ["NFECounter", "SampleResult", "Step", "make_step", "sample"]
