"""gemma3n-rt: Gemma 3n on ONNX Runtime, with per-layer embeddings streamed from mapped files."""
from .bundle import verify
from .errors import Gemma3nError
from .generate import GenerationStats
from .model import Chat, Model, load
from .sampling import SamplingParams

__all__ = ["load", "verify", "Model", "Chat", "SamplingParams", "GenerationStats", "Gemma3nError"]
__version__ = "0.1.0"
