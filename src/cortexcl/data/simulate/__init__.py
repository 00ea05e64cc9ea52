"""Simulated subjects with a known ground truth, in the Algonauts 2023, NSD and NOD layouts."""

from __future__ import annotations

from cortexcl.data.simulate.nod import simulate_nod_subject
from cortexcl.data.simulate.nsd import simulate_nsd
from cortexcl.data.simulate.writer import simulate_subject

__all__ = ["simulate_nod_subject", "simulate_nsd", "simulate_subject"]
