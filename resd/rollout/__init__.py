"""Rollout generation behind a small interface (:class:`Generator`); HF ``generate`` by default."""

from resd.rollout.base import Generator, Rollout, SamplingParams
from resd.rollout.hf import HFGenerator

__all__ = ["Generator", "HFGenerator", "Rollout", "SamplingParams"]
