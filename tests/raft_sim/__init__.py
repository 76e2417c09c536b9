"""Deterministic fault simulator for the pure Raft core (see sim.py); replay with `python -m tests.raft_sim`."""

from .checker import Checker, SafetyViolation
from .sim import SimConfig, SimFailure, Simulation, run_seed

__all__ = ["Checker", "SafetyViolation", "SimConfig", "SimFailure", "Simulation", "run_seed"]
