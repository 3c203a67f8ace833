"""The memory maths of ARMT.

``reference`` is a loop-based version written to be obviously right; ``fused`` is the
vectorised version the model runs. Both expose ``dpfp``, ``gate``, ``read`` and ``write`` with the
same signatures, and the tests hold them equal on outputs, states and gradients.
"""

from . import fused, reference
from .fused import dpfp, gate, read, write

__all__ = ["EPS", "dpfp", "fused", "gate", "read", "reference", "write"]

EPS = fused.EPS
