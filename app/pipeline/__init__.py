"""The request pipeline: bytes in → decode → engine → compose → encode → bytes out.

HTTP, the command-line upscaler, jobs and the benchmark all go through
:class:`Pipeline`; none of them calls the imaging layer or the engine itself.
"""

from app.pipeline.options import OUTPUT_CHOICES, InvalidOptions, OutputOptions
from app.pipeline.pipeline import Pipeline
from app.pipeline.result import UpscaleResult
from app.pipeline.timings import Timings

__all__ = ["OUTPUT_CHOICES", "InvalidOptions", "OutputOptions", "Pipeline", "Timings", "UpscaleResult"]
