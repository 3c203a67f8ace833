"""armt: Associative Recurrent Memory for any Hugging Face causal language model."""

from .cell import ARMTCell
from .config import ARMTConfig
from .model import ARMTForCausalLM, ARMTOutput, segment_bounds
from .state import LayerMemory, MemoryState
from .streaming import MemoryReader, ReadResult
from .targets import find_decoder_layers

__version__ = "0.1.0"

__all__ = [
    "ARMTCell",
    "ARMTConfig",
    "ARMTForCausalLM",
    "ARMTOutput",
    "LayerMemory",
    "MemoryReader",
    "MemoryState",
    "ReadResult",
    "find_decoder_layers",
    "segment_bounds",
]
