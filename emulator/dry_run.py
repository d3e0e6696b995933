"""Mock data for dry runs (``dry_run=True``, qiskit-ibm-runtime 0.51).

A dry run is a job on a device's mock twin (``ibm_fez`` → ``mock_fez``): it is decoded, validated
and pre-processed for real and gets its modelled QPU time, but it never reaches the QPU. IBM
answers it with "randomized mock data" in the program's result schema; so does the emulator, from
a seed derived from the job's parameters (the same job gives the same mock data).

How a job is marked as a dry run: the scheduler passes the mock twin's ``Device.source``, which is
``dry-run:<snapshot>`` (:func:`emulator.backends.split_source`), to the pre-processing stage, and
the :class:`~emulator.classical.PreparedJob` it returns has ``dry_run`` set.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .classical import PreparedJob, Sampled

__all__ = ["mock_rng", "mock_sampled", "mock_seed"]


def mock_seed(params_json: str) -> int:
    """A seed for the mock data of the job whose parameters are ``params_json``."""
    return int.from_bytes(hashlib.sha256(params_json.encode()).digest()[:8], "little")


def mock_rng(prepared: PreparedJob) -> np.random.Generator:
    """The random generator of a dry run's mock data."""
    return np.random.default_rng(prepared.metadata.get("mock_seed", 0))


def mock_sampled(prepared: PreparedJob) -> Sampled:
    """Uniformly random bits in place of what the QPU would have measured: for every circuit of
    ``prepared.sampler_pubs``, one ``BitArray`` per classical register, shaped like its
    parameter values, with the job's shots."""
    from qiskit.primitives.containers import BitArray, DataBin

    from .classical import Sampled

    rng = mock_rng(prepared)
    data = []
    for pub in prepared.sampler_pubs:
        shape = tuple(pub.shape)
        fields = {
            creg.name: BitArray.from_bool_array(
                rng.integers(0, 2, size=(*shape, pub.shots, creg.size)).astype(bool),
                order="little",
            )
            for creg in pub.circuit.cregs
        }
        data.append(DataBin(**fields, shape=shape))
    return Sampled(data=data, aer_seconds=0.0)
