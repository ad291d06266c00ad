"""Typed benchmark configuration: dataclasses, YAML presets, `--set a.b=c` overrides and validation.

Every knob of a run lives here and is passed down explicitly; nothing reads global state. Validation errors
are `BenchError`s that name the field, the value and the fix.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from harness import reading
from harness.errors import BenchError, closest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PRESET_DIR = PROJECT_ROOT / "configs"
DEFAULT_PRESET = "default"

Device = Literal["auto", "cpu", "cuda", "mps"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
# Below this, chrF of a validation sample moves by several points between equally good epochs (8 sentences
# did); eval loss, averaged over every target token of the validation split, is the default signal.
MIN_CHRF_SELECTION_SENTENCES = 100


@dataclass
class ModelConfig:
    """The base model and how it is loaded."""

    name: str = "gemma-3-270m"  # embedded name, hub id (org/name) or a local HF folder
    revision: str | None = None
    dtype: DType = "auto"  # auto: bf16 on CUDA with support, fp32 on CPU (bf16 there is ~30x slower)
    fp16: bool = False  # request float16 compute (honoured on CUDA/MPS only)
    bf16: bool = False  # request bfloat16 compute (honoured where the device supports it natively)
    load_in_4bit: bool = False  # 4-bit base for every technique (QLoRA always loads 4-bit)
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_use_double_quant: bool = True
    bnb_4bit_compute_dtype: DType = "auto"
    trust_remote_code: bool = False
    cache_dir: str | None = None  # where converted embedded models live (default ~/.cache/peft-bench)


@dataclass
class DataConfig:
    """Where the sentence pairs come from and how they become training examples."""

    dataset: str = "embedded"  # 'embedded', a local file/folder (TSV/JSONL), or a hub dataset name
    dataset_config: str | None = None  # hub config name, e.g. 'en-tr' for Helsinki-NLP/opus-100
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    source_lang: str = "en"
    target_lang: str = "tr"
    # Short on purpose: every prompt token costs compute in every step and carries no loss.
    prompt_template: str = "English: {source}\nTurkish:"
    target_prefix: str = " "
    use_chat_template: bool = False
    max_seq_length: int = 128
    max_train_samples: int | None = None
    max_validation_samples: int | None = 200
    validation_fraction: float = 0.1  # used only when the source has no validation split
    test_fraction: float = 0.1  # used only when the source has no test split
    split_seed: int = 1234


@dataclass
class StepConfig:
    """Overrides of the device's training step (harness.steps); null keeps the device's choice."""

    chunked_loss: bool | None = None  # the LM-head loss a chunk of rows at a time (CPU default)
    fused_lora: bool | None = None  # LoRA layers as one addmm each (CPU default)
    sync_free: bool | None = None  # losses read once per log interval, not every step (CUDA default)
    compile: Literal["off", "default", "reduce-overhead", "max-autotune-no-cudagraphs"] | None = None
    cuda_graphs: bool | None = None  # the decoder captured as CUDA graphs, one per batch shape (CUDA only)

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class TrainConfig:
    """The train loop of one trial."""

    lr: float | None = None  # null: the technique's default learning rate
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    epochs: int = 2
    max_steps: int | None = None  # optimizer steps over all epochs; stops early when reached
    # An epoch of N optimizer steps (Keras's steps_per_epoch): evaluation, checkpoint and best-epoch choice every N
    # steps, the data read on from where the last epoch stopped (reshuffled per full pass). null: one full pass.
    steps_per_epoch: int | None = None
    time_budget_s: float | None = None  # wall-clock training budget per trial (evaluation not counted)
    warmup_ratio: float = 0.05
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    log_steps: int = 10
    save_steps: int | None = None  # adapter snapshot every N steps (besides every epoch end)
    seed: int = 42
    group_by_length: bool = True
    packing: bool = True  # padding-free batches (LoRA/QLoRA); prompt-learning techniques keep padded ones
    divergence_factor: float = 1.5  # stop when eval loss exceeds the best so far by this factor
    step: StepConfig = field(default_factory=StepConfig)  # per-device step options (harness.steps)


@dataclass
class EvalConfig:
    """Evaluation after each epoch: teacher-forced loss and generation-based BLEU/chrF."""

    validation_samples: int = 50  # validation sentences translated after every epoch (0: none; eval loss only)
    test_samples: int = 100  # test sentences translated once, with the best epoch's adapter (leaderboard)
    batch_size: int = 32  # teacher-forced eval-loss batches
    generation_batch_size: int = 64  # larger batches amortise reading the weights at every decoding step
    max_new_tokens: int = 64  # each sentence is also capped at 3x its source tokens + 8
    num_beams: int = 1
    # Model selection (best epoch) and the search objective: eval loss over the whole validation split, or
    # chrF of the translated validation sample (allowed from MIN_CHRF_SELECTION_SENTENCES sentences up).
    selection: Literal["eval_loss", "chrf"] = "eval_loss"
    bootstrap_resamples: int = 1000  # sacrebleu's bootstrap: confidence intervals and the paired test
    bootstrap_seed: int = 12345  # sacrebleu's own default seed (SACREBLEU_SEED)


@dataclass
class RunSettings:
    """What the driver runs and where it writes."""

    name: str | None = None
    results_dir: str = "results"
    techniques: list[str] = field(default_factory=lambda: ["all"])
    models: list[str] = field(default_factory=list)  # empty: just model.name
    baseline: bool = True
    search: Literal["none", "optuna"] = "none"
    trials: int = 4
    metric: Literal["chrf", "bleu", "eval_loss"] = "chrf"
    scheduler: Literal["none", "asha"] = "none"
    max_concurrent: int | None = None  # null: chosen per device
    device: Device = "auto"
    ray_address: str | None = None
    max_failures: int = 1  # Ray retries of a crashed (not a raising) trial
    seeds: int = 1  # every configuration trained with seeds train.seed, train.seed+1, ... (data order, init, dropout)
    significance_test: Literal["paired_bootstrap", "approximate_randomization"] = "paired_bootstrap"
    significance_level: float = 0.05  # rows whose p-value against #1 is at or above it share rank 1


@dataclass
class BenchConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # Hyper-parameters shared by all trials, e.g. {'r': 8}: each technique that takes a key uses it (null: the
    # technique's own default). What a key means and which values are valid is the techniques' knowledge.
    peft: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunSettings = field(default_factory=RunSettings)
    # Per-technique overrides of hyper-parameters, e.g. {'lora': {'r': 8, 'lr': 0.001}}.
    per_technique: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------- loading


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_preset(preset_or_path: str) -> Path:
    """A preset name ('quick') or a path to a YAML file."""
    candidate = Path(preset_or_path).expanduser()
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise BenchError(
                f"--config: the file '{preset_or_path}' does not exist. Give a preset name "
                f"({', '.join(preset_names())}) or the path of a YAML file."
            )
        return candidate
    path = PRESET_DIR / f"{preset_or_path}.yaml"
    if not path.is_file():
        raise BenchError(
            f"--config: '{preset_or_path}' is neither a preset nor a file. Presets: "
            f"{', '.join(preset_names())}.{closest(preset_or_path, preset_names())}"
        )
    return path


def read_yaml(path: Path) -> dict[str, Any]:
    data = reading.read_yaml(path, "--config")  # encoding, byte-order mark and syntax errors
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BenchError(
            f"--config: '{path}' must hold a mapping of sections (model:, data:, train:, ...), "
            f"not a {type(data).__name__}."
        )
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=3e-4' -> (['train', 'lr'], 0.0003); the value is read as YAML."""
    if "=" not in text:
        raise BenchError(
            f"--set: '{text}' has no '='. Write overrides as SECTION.KEY=VALUE, e.g. --set train.lr=3e-4."
        )
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise BenchError(f"--set: '{text}' has an empty key. Write e.g. --set train.batch_size=8.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_override(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def load_config(
    preset_or_path: str | None = None,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> BenchConfig:
    """Preset YAML, then `extra` (explicit CLI flags, a nested dict), then `--set` overrides (last wins)."""
    data = read_yaml(resolve_preset(preset_or_path or DEFAULT_PRESET))
    for section, values in (extra or {}).items():
        for key, value in values.items():
            apply_override(data, [section, key], value)
    for text in overrides or []:
        parts, value = parse_override(text)
        apply_override(data, parts, value)
    cfg = build(BenchConfig, data, "")
    validate(cfg)
    return cfg


def config_from_dict(data: dict[str, Any]) -> BenchConfig:
    """Rebuild a config saved with `to_dict` (a run's config.json)."""
    cfg = build(BenchConfig, data, "")
    validate(cfg)
    return cfg


# ------------------------------------------------------------------------------------- typed building

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def build(cls: type, data: Any, path: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise BenchError(
            f"config section '{path or 'top level'}' must be a mapping of keys, got {data!r}. "
            f"Write it as '{path.rsplit('.', 1)[-1] or 'section'}:' followed by indented KEY: VALUE lines."
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise BenchError(
                f"config key '{full}' is unknown.{closest(str(key), fields)} Valid keys here: "
                f"{', '.join(fields)}."
            )
        kwargs[key] = _coerce(_hints(cls)[key], value, full)
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if get_origin(tp) is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if get_origin(tp) is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value if value is not None else {}, path)
    if origin in (types.UnionType, typing.Union):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, path)
            except BenchError:
                continue
        raise _type_error(path, value, tp)
    if origin is Literal:
        if value in get_args(tp):
            return value
        hint = closest(str(value), [str(a) for a in get_args(tp)])
        raise BenchError(
            f"config key '{path}' is {value!r}; it must be {_type_name(tp)}.{hint}"
        )
    if origin is list:
        if isinstance(value, str) and path.endswith(("techniques", "models")):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise _type_error(path, value, tp)
        return [_coerce(get_args(tp)[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(path, value, tp)
        return {str(k): v for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(path, value, tp)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _type_error(path, value, tp)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads '3e-4' (no dot) as a string; accept it as the number it plainly is.
        if isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", value.strip()):
            return float(value)
        raise _type_error(path, value, tp)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(path, value, tp)
    return value


def _type_error(path: str, value: Any, tp: Any) -> BenchError:
    return BenchError(
        f"config key '{path}' is {value!r} ({type(value).__name__}); it must be {_type_name(tp)}. "
        f"Fix it in the YAML or with --set {path}=VALUE."
    )


# -------------------------------------------------------------------------------------------- validation


def _require(ok: bool, path: str, value: Any, rule: str, example: str) -> None:
    if not ok:
        raise BenchError(f"config key '{path}' is {value!r}; {rule}. Fix: --set {path}={example}.")


def validate(cfg: BenchConfig) -> None:
    """Range checks and names that must exist (techniques). Types were checked while building."""
    t, d, e, r = cfg.train, cfg.data, cfg.eval, cfg.run
    if t.lr is not None:
        _require(t.lr > 0, "train.lr", t.lr, "the learning rate must be > 0", "3e-4")
    _require(t.batch_size >= 1, "train.batch_size", t.batch_size, "the batch size must be >= 1", "8")
    _require(
        t.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps",
        t.gradient_accumulation_steps, "it must be >= 1", "1",
    )
    _require(t.epochs >= 1, "train.epochs", t.epochs, "at least one epoch is needed", "2")
    if t.max_steps is not None:
        _require(t.max_steps >= 1, "train.max_steps", t.max_steps, "it must be >= 1 (or null)", "100")
    if t.steps_per_epoch is not None:
        _require(t.steps_per_epoch >= 1, "train.steps_per_epoch", t.steps_per_epoch, "it must be >= 1 (or null "
                 "for one full pass over the training data)", "10")
    if t.time_budget_s is not None:
        _require(t.time_budget_s > 0, "train.time_budget_s", t.time_budget_s, "it must be > 0 (or null)", "300")
    _require(0 <= t.warmup_ratio < 1, "train.warmup_ratio", t.warmup_ratio, "it must be in [0, 1)", "0.05")
    _require(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "it must be >= 0", "0.0")
    _require(t.max_grad_norm > 0, "train.max_grad_norm", t.max_grad_norm, "it must be > 0", "1.0")
    _require(t.log_steps >= 1, "train.log_steps", t.log_steps, "it must be >= 1", "10")
    if t.save_steps is not None:
        _require(t.save_steps >= 1, "train.save_steps", t.save_steps, "it must be >= 1 (or null)", "100")
    _require(t.divergence_factor > 1, "train.divergence_factor", t.divergence_factor, "it must be > 1", "1.5")
    _require(d.max_seq_length >= 8, "data.max_seq_length", d.max_seq_length, "it must be >= 8", "128")
    if d.max_train_samples is not None:
        _require(d.max_train_samples >= 1, "data.max_train_samples", d.max_train_samples, "it must be >= 1", "500")
    if d.max_validation_samples is not None:
        _require(
            d.max_validation_samples >= 1, "data.max_validation_samples", d.max_validation_samples,
            "it must be >= 1", "200",
        )
    for key in ("validation_fraction", "test_fraction"):
        value = getattr(d, key)
        _require(0 < value < 0.5, f"data.{key}", value, "it must be between 0 and 0.5", "0.1")
    _require("{source}" in d.prompt_template, "data.prompt_template", d.prompt_template,
             "the template must contain the placeholder {source}", "'English: {source}\\nTurkish:'")
    _require(e.validation_samples >= 0, "eval.validation_samples", e.validation_samples,
             "it must be >= 0 (0: no translation after each epoch)", "50")
    _require(e.test_samples >= 1, "eval.test_samples", e.test_samples, "it must be >= 1", "100")
    _require(e.batch_size >= 1, "eval.batch_size", e.batch_size, "it must be >= 1", "32")
    _require(e.generation_batch_size >= 1, "eval.generation_batch_size", e.generation_batch_size,
             "it must be >= 1", "64")
    _require(e.max_new_tokens >= 1, "eval.max_new_tokens", e.max_new_tokens, "it must be >= 1", "64")
    _require(e.num_beams >= 1, "eval.num_beams", e.num_beams, "it must be >= 1", "1")
    _require(e.bootstrap_resamples >= 100, "eval.bootstrap_resamples", e.bootstrap_resamples,
             "a 95% interval needs at least 100 bootstrap resamples", "1000")
    if e.selection == "chrf":
        _require(e.validation_samples >= MIN_CHRF_SELECTION_SENTENCES, "eval.validation_samples",
                 e.validation_samples, f"with eval.selection=chrf the best epoch is chosen on this many translated "
                 f"validation sentences, and fewer than {MIN_CHRF_SELECTION_SENTENCES} give a chrF too noisy to "
                 "choose on (or use eval.selection=eval_loss)", str(MIN_CHRF_SELECTION_SENTENCES))
    _require(r.trials >= 1, "run.trials", r.trials, "at least one trial per technique is needed", "4")
    if r.max_concurrent is not None:
        _require(r.max_concurrent >= 1, "run.max_concurrent", r.max_concurrent, "it must be >= 1", "1")
    _require(r.max_failures >= 0, "run.max_failures", r.max_failures, "it must be >= 0", "1")
    _require(r.seeds >= 1, "run.seeds", r.seeds, "every configuration needs at least one seed", "3")
    _require(0 < r.significance_level < 1, "run.significance_level", r.significance_level,
             "it must be between 0 and 1", "0.05")
    if cfg.model.fp16 and cfg.model.bf16:
        raise BenchError(
            "config keys 'model.fp16' and 'model.bf16' are both true; choose one (or neither, for the "
            "device's best dtype). Fix: --set model.fp16=false."
        )
    validate_hyperparameters(cfg)


def validate_hyperparameters(cfg: BenchConfig) -> None:
    """Technique names exist (the registry may hold third-party plugins) and each technique accepts the
    hyper-parameters given for it; the rules are the techniques' own."""
    from techniques import registry

    r = cfg.run
    names = list(r.techniques) + [n for n in cfg.per_technique]
    registry.check_names([n for n in names if n != "all"], "run.techniques")
    takers: dict[str, list[Any]] = {}
    for name in registry.names():
        tech = registry.get(name)
        for key in tech.defaults:
            if key != "lr":  # the shared learning rate is train.lr
                takers.setdefault(key, []).append(tech)
    for key, value in cfg.peft.items():
        if key not in takers:
            raise BenchError(
                f"config key 'peft.{key}' is not a shared hyper-parameter of any technique.{closest(key, takers)} "
                f"Shared hyper-parameters: {', '.join(sorted(takers))} (the learning rate is train.lr)."
            )
        for tech in takers[key]:
            tech.check_value(key, value, "peft")
    for name, params in cfg.per_technique.items():
        if not isinstance(params, dict):
            raise BenchError(
                f"config key 'per_technique.{name}' must be a mapping of hyper-parameters, got {params!r}. "
                f"Fix: per_technique: {{{name}: {{lr: 0.001}}}}."
            )
        if isinstance(params.get("lr"), str):  # YAML 1.1 reads '3e-4' as a string
            try:
                params["lr"] = float(params["lr"])
            except ValueError:
                pass
        registry.get(name).validate(params, f"per_technique.{name}")
