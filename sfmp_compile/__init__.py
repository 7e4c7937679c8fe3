"""sfmp_compile: search-free mixed-precision (SFMP) weight quantization for PyTorch LLMs.

Data flows top-down through the package: salience -> reordering -> allocation -> quantizers ->
format -> ops / codegen -> linear -> plan / quantize -> checkpoint -> stream -> hf_quantizer (transformers) -> passes ->
backend -> eval/
(models, text, metrics, baselines, experiments, reports) -> cli.
"""
from .config import QuantConfig, SFMPConfigError  # noqa: F401
from .format import FORMAT_VERSION, PackedWeight, pack  # noqa: F401
from .linear import SFMPLinear  # noqa: F401
from .plan import Plan, LayerPlan, plan, find_linears  # noqa: F401
from .quantize import quantize, quantization_report, quantize_weight  # noqa: F401
from .checkpoint import save_quantized, load_quantized, CheckpointError  # noqa: F401
from .stream import stream_quantize  # noqa: F401
from .backend import SFMPBackend, sfmp_backend  # noqa: F401
from .hf_quantizer import SFMPHfConfig, SFMPHfQuantizer, register as _register_with_transformers  # noqa: F401

# AutoModelForCausalLM.from_pretrained(<SFMP checkpoint>) works once this package is imported
_register_with_transformers()
