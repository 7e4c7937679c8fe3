"""transformers integration: ``AutoModelForCausalLM.from_pretrained(sfmp_dir)`` after ``import sfmp_compile``.

``import sfmp_compile`` registers, through transformers' public API
(``transformers.quantizers.auto.register_quantization_config`` / ``register_quantizer``), a
quantization config and an ``HfQuantizer`` for ``quant_method: "sfmp"``, the method that
``save_quantized`` writes into config.json. transformers then hands every SFMP checkpoint to
:class:`SFMPHfQuantizer`:

  1. ``update_attn_implementation`` (the one hook that sees the config before transformers reads
     a file or enters its model-building contexts) runs ``load_quantized`` on the directory: every
     CheckpointError check of the reference path runs (tensors against sfmp.json's checksums,
     config.json against its digest, the skeleton on the meta device first), and a refused
     checkpoint raises the same CheckpointError from ``from_pretrained``. It also points
     ``transformers_weights`` back at model.safetensors: the checkpoint names a file that does not
     exist, so a load WITHOUT this quantizer fails instead of building random weights
     (checkpoint.HF_WEIGHTS_TRIPWIRE says why);
  2. before any weight is loaded, the checked model's ``SFMPLinear`` modules replace the
     ``nn.Linear`` layers of transformers' (meta-device) model, which must then match the checked
     model tensor for tensor in shape and dtype (an explicit ``dtype=`` unlike the saved one is
     refused: the packed scales are fp16 whatever it says);
  3. transformers loads model.safetensors into that model as into any other: the packed tensors
     land in the SFMPLinear buffers, nothing is cast (each tensor keeps its buffer's dtype);
  4. afterwards every tensor of the model is checked against its checksum in sfmp.json once more,
     so what runs is bit for bit what ``load_quantized`` gives, whatever transformers did.

``model.save_pretrained(d)`` on such a model writes a ``save_quantized`` checkpoint (plus
generation_config.json) into ``d``, keeping other files there as transformers does: transformers'
own save would write no sfmp.json, and no quantizer hook sees the target directory, so the loaded
model carries an instance-level ``save_pretrained`` (see :func:`save_pretrained`).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from types import MethodType

from torch import nn
from transformers.quantizers import HfQuantizer
from transformers.quantizers.auto import register_quantization_config, register_quantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from .checkpoint import HF_QUANT_METHOD, load_quantized, save_quantized
from .checkpoint_files import CONFIG, MARKER, WEIGHTS, CheckpointError, read_marker, tensor_digest
from .format import FORMAT_VERSION
from .linear import SFMPLinear


class SFMPHfConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of an SFMP checkpoint's config.json: ``{"quant_method": "sfmp",
    "format_version": 1}``. It only routes the checkpoint here; what the layers hold (bit maps,
    orders, geometry) and the QuantConfig they were made with are in sfmp.json."""

    def __init__(self, format_version: int = FORMAT_VERSION, quant_method: str = HF_QUANT_METHOD, **kwargs):
        if quant_method != HF_QUANT_METHOD:
            raise ValueError(f"SFMPHfConfig: quant_method must be {HF_QUANT_METHOD!r}, got {quant_method!r}")
        self.quant_method = HF_QUANT_METHOD
        self.format_version = format_version
        if kwargs:
            raise ValueError(f"sfmp quantization_config: unknown keys {sorted(kwargs)} (it holds quant_method and "
                             "format_version; the quantization itself is described by sfmp.json)")


class SFMPHfQuantizer(HfQuantizer):
    """Loads SFMP checkpoints for ``from_pretrained`` (see the module docstring for the steps).

    Only pre-quantized checkpoints: quantizing a float model happens with ``sfmp_compile.quantize``
    or ``sfmp quantize``, which need calibration data and a budget that a config cannot carry."""

    requires_calibration = True  # transformers: refuse quantization_config=SFMPHfConfig() on a float model

    def __init__(self, quantization_config: SFMPHfConfig, **kwargs):
        super().__init__(quantization_config, **kwargs)
        self._ckpt_dir: str | None = None
        self._checked: nn.Module | None = None  # load_quantized's model, between the two hooks
        self._checksums: dict[str, str] = {}

    def validate_environment(self, device_map=None, **kwargs):
        # SFMPLinear holds a layer's tensors as one module's buffers; offloading or splitting a
        # model across devices would need accelerate hooks that know about them
        devices = set(device_map.values()) if isinstance(device_map, dict) else set()
        if len(devices) > 1 or "disk" in devices:
            raise ValueError(f"sfmp: device_map must place the whole model on one device, got {sorted(map(str, devices))}")

    def update_attn_implementation(self, config):
        """The one hook that sees the config before transformers reads a file or builds the model:
        check the whole checkpoint here, exactly as ``load_quantized`` does, outside transformers'
        model-building contexts (meta device, default dtype, tying switched off); and undo the
        checkpoint's tripwire (checkpoint.HF_WEIGHTS_TRIPWIRE), since this quantizer reads model.safetensors."""
        self._ckpt_dir = _checkpoint_dir(getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", ""))
        self._checked = load_quantized(self._ckpt_dir)  # raises every CheckpointError of the reference path
        self._checksums = read_marker(self._ckpt_dir).get("checksums", {})
        config.transformers_weights = WEIGHTS
        return config

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        """Put the checked SFMPLinear layers into ``model`` (transformers' skeleton, parameters on the
        meta device) and check that it matches the checked model tensor for tensor."""
        checked, self._checked = self._checked, None  # its other tensors are freed when this returns
        files = [os.path.realpath(f) for f in checkpoint_files or []]
        if files != [os.path.realpath(os.path.join(self._ckpt_dir, WEIGHTS))]:
            raise CheckpointError(f"{self._ckpt_dir}: transformers resolved the weights {checkpoint_files}, not the "
                                  f"checked {WEIGHTS} (an SFMP checkpoint is one {WEIGHTS} beside {MARKER})")
        for name, module in checked.named_modules():
            if isinstance(module, SFMPLinear):
                try:
                    model.set_submodule(name, module)
                except AttributeError:
                    raise CheckpointError(f"{self._ckpt_dir}: layer {name!r} is not in the model from_pretrained builds") from None
        _same_tensors(self._ckpt_dir, model, checked)
        if hasattr(checked, "sfmp_plan"):
            model.sfmp_plan = checked.sfmp_plan
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        """Every stored tensor, as loaded, against its checksum; then attach the SFMP ``save_pretrained``."""
        state = model.state_dict()
        for key, digest in self._checksums.items():
            if key not in state or tensor_digest(state[key]) != digest:
                raise CheckpointError(f"{self._ckpt_dir}: tensor {key} as transformers loaded it does not match its "
                                      f"checksum in {MARKER} (the file changed while loading?)")
        for module in model.modules():
            if isinstance(module, SFMPLinear) and module.bias is not None:
                module.bias.requires_grad_(False)  # transformers makes every loaded float a trainable Parameter
        model.save_pretrained = MethodType(save_pretrained, model)
        return model

    def is_serializable(self, **kwargs) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False  # the packed codes have no gradient; SFMPLinear's bias is frozen too

    @property
    def is_compileable(self) -> bool:
        return True  # the sfmp ops have fake kernels: plain torch.compile and sfmp_backend() both trace them


def _checkpoint_dir(name: str) -> str:
    """The local directory of ``from_pretrained``'s argument: itself, or for a hub id the snapshot
    directory huggingface_hub downloads sfmp.json, config.json and model.safetensors into (the
    default revision; transformers then finds the same files in its cache)."""
    if os.path.isdir(name):
        return name
    from transformers.utils import cached_file
    try:
        paths = [cached_file(name, f) for f in (MARKER, CONFIG, WEIGHTS)]
    except OSError as e:
        raise CheckpointError(f"{name}: cannot fetch the SFMP checkpoint ({str(e)[:200]})") from None
    return os.path.dirname(paths[0])


def _same_tensors(ckpt_dir: str, model: nn.Module, checked: nn.Module) -> None:
    """transformers' skeleton and the checked model must agree on every tensor's name, shape and
    dtype, or loading would cast or drop something."""
    want = {k: (tuple(v.shape), v.dtype) for k, v in checked.state_dict().items()}
    got = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    if set(want) != set(got):
        diff = sorted(set(want) ^ set(got))
        raise CheckpointError(f"{ckpt_dir}: the model from_pretrained builds and the checkpoint differ on tensors {diff[:5]}")
    for k, (shape, dtype) in want.items():
        if got[k] != (shape, dtype):
            hint = " (pass no dtype=: an SFMP checkpoint loads in the dtype it was saved in)" if got[k][0] == shape else ""
            raise CheckpointError(f"{ckpt_dir}: tensor {k} is {dtype} {shape} in the checkpoint but from_pretrained "
                                  f"builds it as {got[k][1]} {got[k][0]}{hint}")


_SAVE_OPTIONS = {"is_main_process", "safe_serialization"}


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike, **kwargs) -> None:
    """``model.save_pretrained(save_directory)`` for a model loaded from an SFMP checkpoint.

    Writes what ``save_quantized`` writes (config.json, model.safetensors, sfmp.json) plus
    generation_config.json into ``save_directory``, replacing those files and keeping any other
    (a tokenizer saved there before stays). The result loads back bit for bit through both
    ``from_pretrained`` and ``load_quantized``. Of save_pretrained's options only
    ``is_main_process`` and ``safe_serialization=True`` are accepted: one unsharded safetensors file
    is the SFMP format, and pushing to the hub is ``huggingface_hub.upload_folder`` on the result."""
    unknown = sorted(set(kwargs) - _SAVE_OPTIONS)
    if unknown or kwargs.get("safe_serialization", True) is not True:
        raise ValueError(f"sfmp: save_pretrained does not support {unknown or ['safe_serialization=False']} "
                         f"(it writes one {WEIGHTS} and {MARKER}; accepted: {sorted(_SAVE_OPTIONS)})")
    if not kwargs.get("is_main_process", True):
        return
    save_directory = os.fspath(save_directory)
    if os.path.isfile(save_directory):
        raise ValueError(f"sfmp: save_pretrained needs a directory, {save_directory} is a file")
    os.makedirs(save_directory, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".sfmp-save-", dir=save_directory)
    try:
        out = save_quantized(model, os.path.join(tmp, "ckpt"))
        if getattr(model, "generation_config", None) is not None and model.can_generate():
            model.generation_config.save_pretrained(out)
        # sfmp.json last: until it is replaced, an old one refuses the new weights by checksum
        names = sorted(set(os.listdir(out)) - {MARKER}) + [MARKER]
        for name in names:
            os.replace(os.path.join(out, name), os.path.join(save_directory, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def register() -> None:
    """Register the config and quantizer under ``quant_method: "sfmp"`` (run by ``import sfmp_compile``).
    A second call, or one after this module was reloaded, replaces our own entries; another
    package's "sfmp" entry makes transformers' register_* raise that it is already registered."""
    from transformers.quantizers import auto
    for table, cls, reg in ((auto.AUTO_QUANTIZATION_CONFIG_MAPPING, SFMPHfConfig, register_quantization_config),
                            (auto.AUTO_QUANTIZER_MAPPING, SFMPHfQuantizer, register_quantizer)):
        if getattr(table.get(HF_QUANT_METHOD), "__module__", None) == __name__:
            table[HF_QUANT_METHOD] = cls
        else:
            reg(HF_QUANT_METHOD)(cls)
