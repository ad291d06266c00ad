"""Sentence pairs -> splits -> tokenized examples -> dynamically padded batches.

Sources: the embedded corpus, local TSV (`en<TAB>tr`, or the 4-column Tatoeba `eng tur en tr`) or JSONL files
(or a folder of train/validation/test files), and hub datasets in the `translation` format (opus-100, wmt).
The loss covers only the target and EOS: prompt and padding labels are -100.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.config import DataConfig
from harness.errors import BenchError
from harness.io import atomic_write_json
from harness.reading import normalise_text, read_text

log = logging.getLogger(__name__)

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {
    "train": ("train",),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test",),
}
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Pair:
    source: str
    target: str


@dataclass
class Splits:
    train: list[Pair]
    validation: list[Pair]
    test: list[Pair]
    provenance: dict[str, Any] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        return {s: len(getattr(self, s)) for s in SPLITS}


# --------------------------------------------------------------------------------------------- readers


def read_pairs(path: Path) -> list[Pair]:
    """Read a TSV (2 or 4 columns, detected from the first line) or JSONL file of sentence pairs."""
    if not path.is_file():
        raise BenchError(
            f"data: the file '{path}' does not exist. Give an existing TSV/JSONL file or folder "
            "(--set data.dataset=PATH), or use the embedded corpus (data.dataset=embedded)."
        )
    if path.suffix in (".jsonl", ".json"):
        return _read_jsonl(path)
    return _read_tsv(path)


def _read_tsv(path: Path) -> list[Pair]:
    pairs: list[Pair] = []
    width = None
    for lineno, line in enumerate(read_text(path, "data").split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        cols = line.split("\t")
        if width is None:
            if len(cols) not in (2, 4):
                raise BenchError(
                    f"data: {path}:{lineno} has {len(cols)} tab-separated columns; a TSV must have 2 "
                    "(english<TAB>turkish) or 4 (eng<TAB>tur<TAB>english<TAB>turkish, Tatoeba) columns."
                )
            width = len(cols)
        if len(cols) != width:
            raise BenchError(
                f"data: {path}:{lineno} has {len(cols)} tab-separated columns but the file's first line "
                f"has {width}. Fix that line (a stray tab or a missing column)."
            )
        source, target = (cols[0], cols[1]) if width == 2 else (cols[2], cols[3])
        _append(pairs, source, target)
    return pairs


def _read_jsonl(path: Path) -> list[Pair]:
    pairs: list[Pair] = []
    for lineno, line in enumerate(read_text(path, "data").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchError(f"data: {path}:{lineno} is not valid JSON ({exc.msg}). Fix that line.") from None
        source, target = _fields_of(row)
        if source is None:
            raise BenchError(
                f"data: {path}:{lineno} has keys {sorted(row) if isinstance(row, dict) else row!r}; each "
                "JSONL line needs 'en' and 'tr', 'source' and 'target', or 'translation': {'en', 'tr'}."
            )
        _append(pairs, source, target)
    return pairs


def _fields_of(row: Any, src: str = "en", tgt: str = "tr") -> tuple[str | None, str | None]:
    if not isinstance(row, dict):
        return None, None
    if isinstance(row.get("translation"), dict):
        row = row["translation"]
    for a, b in ((src, tgt), ("source", "target"), ("english", "turkish")):
        if isinstance(row.get(a), str) and isinstance(row.get(b), str):
            return row[a], row[b]
    return None, None


def _append(pairs: list[Pair], source: str, target: str) -> None:
    # Files arrive normalised from read_text; hub rows are normalised here, by the same function.
    source, target = normalise_text(source).strip(), normalise_text(target).strip()
    if source and target:
        pairs.append(Pair(source, target))


def _find_split_files(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for split, aliases in _SPLIT_ALIASES.items():
        for alias in aliases:
            for ext in (".tsv", ".jsonl", ".txt"):
                if (folder / f"{alias}{ext}").is_file() and split not in found:
                    found[split] = folder / f"{alias}{ext}"
    return found


def _load_hub(cfg: DataConfig) -> dict[str, list[Pair]]:
    from harness.models import check_hub

    check_hub(cfg.dataset, "data.dataset", repo_type="dataset")
    try:
        import datasets

        ds = datasets.load_dataset(cfg.dataset, cfg.dataset_config)
    except Exception as exc:  # offline, unknown name, missing config: all surface as user errors here
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise BenchError(
            f"data.dataset: the hub dataset '{cfg.dataset}' (config {cfg.dataset_config!r}) could not be loaded "
            f"({first}). If this machine is offline, use a local TSV/JSONL file or folder "
            "(--set data.dataset=../shared/data/eng-tur/train.tsv) or the embedded corpus (data.dataset=embedded)."
        ) from None
    out: dict[str, list[Pair]] = {}
    for name, split in ds.items():
        key = next((s for s, aliases in _SPLIT_ALIASES.items() if name in aliases), None)
        if key is None:
            continue
        pairs: list[Pair] = []
        for row in split:
            source, target = _fields_of(row, cfg.source_lang, cfg.target_lang)
            if source is not None:
                _append(pairs, source, target)
        out[key] = pairs
    return out


def _raw_splits(cfg: DataConfig) -> tuple[dict[str, list[Pair]], dict[str, str]]:
    """Whatever splits the source has, and where each came from."""
    files: dict[str, Path] = {}
    if cfg.dataset == "embedded":
        files = {s: CORPUS_DIR / f"{s}.tsv" for s in SPLITS}
    elif Path(cfg.dataset).expanduser().is_dir():
        files = _find_split_files(Path(cfg.dataset).expanduser())
        if not files:
            raise BenchError(
                f"data.dataset: the folder '{cfg.dataset}' holds no train/validation/test .tsv or .jsonl file. "
                "Name the files train.tsv, validation.tsv, test.tsv (or give one file)."
            )
    elif Path(cfg.dataset).expanduser().exists() or Path(cfg.dataset).suffix in (".tsv", ".jsonl", ".txt"):
        files = {"train": Path(cfg.dataset).expanduser()}
    for split in SPLITS:
        explicit = getattr(cfg, f"{split}_file")
        if explicit:
            files[split] = Path(explicit).expanduser()
    if files:
        return {s: read_pairs(p) for s, p in files.items()}, {s: str(p) for s, p in files.items()}
    if "/" not in cfg.dataset:
        raise BenchError(
            f"data.dataset: '{cfg.dataset}' is not 'embedded', not an existing file or folder, and not a hub "
            "dataset name (org/name). Fix the path, or use data.dataset=embedded."
        )
    raw = _load_hub(cfg)
    return raw, {s: f"hub:{cfg.dataset}/{cfg.dataset_config}:{s}" for s in raw}


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def load_splits(cfg: DataConfig) -> Splits:
    """Train/validation/test pairs: seeded splits where the source lacks them, test sources removed from
    train and validation, train capped at `max_train_samples`."""
    raw, where = _raw_splits(cfg)
    rng = random.Random(cfg.split_seed)
    pool = list(raw.get("train", []))
    rng.shuffle(pool)
    made = []
    for split, fraction in (("test", cfg.test_fraction), ("validation", cfg.validation_fraction)):
        if not raw.get(split):
            n = max(1, int(round(len(pool) * fraction)))
            raw[split], pool = pool[:n], pool[n:]
            made.append(split)
    test_sources = {_normalise(p.source) for p in raw["test"]}
    train = [p for p in pool if _normalise(p.source) not in test_sources]
    validation = [p for p in raw["validation"] if _normalise(p.source) not in test_sources]
    removed = len(pool) - len(train)
    if cfg.max_train_samples is not None:
        train = train[: cfg.max_train_samples]
    for split, pairs in (("train", train), ("validation", validation), ("test", raw["test"])):
        if not pairs:
            raise BenchError(
                f"data: the {split} split of '{cfg.dataset}' is empty after reading and filtering (empty lines, "
                "test sentences removed from train). Give more data or a separate "
                f"data.{split}_file."
            )
    provenance = {
        "dataset": cfg.dataset,
        "dataset_config": cfg.dataset_config,
        "files": where,
        "made_splits": made,
        "split_seed": cfg.split_seed,
        "train_removed_as_test_duplicates": removed,
    }
    splits = Splits(train, validation, raw["test"], provenance)
    provenance["sizes"] = splits.sizes()
    provenance["sha256"] = fingerprint(splits)
    return splits


def fingerprint(splits: Splits) -> str:
    digest = hashlib.sha256()
    for split in SPLITS:
        for pair in getattr(splits, split):
            digest.update(f"{split}\t{pair.source}\t{pair.target}\n".encode())
    return digest.hexdigest()[:16]


def sample(pairs: Sequence[Pair], n: int | None, seed: int) -> list[Pair]:
    """A fixed, seeded sample (the same for every trial of a run)."""
    if n is None or n >= len(pairs):
        return list(pairs)
    return random.Random(seed).sample(list(pairs), n)


# ------------------------------------------------------------------------------------------ tokenization


def build_prompt(source: str, cfg: DataConfig, tokenizer: Any) -> str:
    text = cfg.prompt_template.format(source=source)
    if cfg.use_chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise BenchError(
                "data.use_chat_template: the tokenizer of this model has no chat template. Set "
                "data.use_chat_template=false to use data.prompt_template as plain text."
            )
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return text


def _prompt_ids(prompts: list[str], tokenizer: Any, cfg: DataConfig) -> list[list[int]]:
    # A chat template already contains the BOS text; plain prompts get the tokenizer's special tokens.
    return tokenizer(prompts, add_special_tokens=not cfg.use_chat_template)["input_ids"]


@dataclass
class Encoded:
    """Tokenized examples: ids per example and how many leading tokens are prompt (label -100)."""

    input_ids: list[np.ndarray]
    prompt_lengths: np.ndarray
    dropped: int = 0  # whole examples left out: the prompt alone reaches max_seq_length
    truncated: int = 0  # examples kept with their target cut at max_seq_length

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.input_ids])

    def target_tokens(self) -> int:
        return int(sum(len(x) for x in self.input_ids) - self.prompt_lengths.sum())

    def labels(self, i: int) -> np.ndarray:
        labels = self.input_ids[i].astype(np.int64).copy()
        labels[: self.prompt_lengths[i]] = IGNORE_INDEX
        return labels


def encode(pairs: Sequence[Pair], tokenizer: Any, cfg: DataConfig) -> Encoded:
    """Prompt + target_prefix + target + EOS, truncated on the right to max_seq_length; an example whose
    target would be cut away entirely is dropped (it would train on nothing). Both are counted."""
    if tokenizer.eos_token_id is None:
        raise BenchError("model: the tokenizer has no EOS token, so targets cannot be terminated. Use another model.")
    prompts = _prompt_ids([build_prompt(p.source, cfg, tokenizer) for p in pairs], tokenizer, cfg)
    targets = tokenizer([cfg.target_prefix + p.target for p in pairs], add_special_tokens=False)["input_ids"]
    ids: list[np.ndarray] = []
    prompt_lengths: list[int] = []
    dropped = truncated = 0
    for prompt, target in zip(prompts, targets):
        whole = prompt + target + [tokenizer.eos_token_id]
        full = whole[: cfg.max_seq_length]
        if len(full) <= len(prompt):
            dropped += 1
            continue
        truncated += len(full) < len(whole)
        ids.append(np.asarray(full, dtype=np.int32))
        prompt_lengths.append(len(prompt))
    return Encoded(ids, np.asarray(prompt_lengths, dtype=np.int32), dropped, truncated)


def warn_if_cut(enc: Encoded, cfg: DataConfig, tag: str) -> None:
    """Tell the user (every trial, cached or not) how many pairs data.max_seq_length dropped or cut short."""
    if enc.dropped or enc.truncated:
        log.warning("%s data: %d of %d pairs dropped (the prompt alone reaches data.max_seq_length=%d) and %d "
                    "truncated (target cut at %d tokens); raise data.max_seq_length to keep them whole",
                    tag, enc.dropped, len(enc) + enc.dropped, cfg.max_seq_length, enc.truncated,
                    cfg.max_seq_length)


def tokenizer_key(tokenizer: Any) -> str:
    """Identity of a tokenizer for cache keys: two models never share tokenized data by mistake."""
    digest = hashlib.sha256()
    digest.update(str(getattr(tokenizer, "name_or_path", "")).encode())
    digest.update(str(len(tokenizer)).encode())
    vocab = tokenizer.get_vocab()
    for token in sorted(vocab)[:: max(1, len(vocab) // 2000)]:
        digest.update(f"{token}:{vocab[token]}".encode())
    digest.update(str(tokenizer.eos_token_id).encode())
    return digest.hexdigest()[:16]


def encode_cached(
    pairs: Sequence[Pair], tokenizer: Any, cfg: DataConfig, cache_dir: Path | None, tag: str
) -> Encoded:
    """`encode`, cached on disk as plain arrays (no pickle), keyed by data, tokenizer and prompt settings."""
    if cache_dir is None:
        enc = encode(pairs, tokenizer, cfg)
        warn_if_cut(enc, cfg, tag)
        return enc
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(f"{pair.source}\t{pair.target}\n".encode())
    settings = [tokenizer_key(tokenizer), cfg.prompt_template, cfg.target_prefix, cfg.use_chat_template,
                cfg.max_seq_length, getattr(tokenizer, "chat_template", None) if cfg.use_chat_template else None]
    digest.update(json.dumps(settings).encode())
    path = cache_dir / f"{tag}-{digest.hexdigest()[:20]}.npz"
    enc = _read_cached(path) if path.is_file() else None
    if enc is None:
        enc = encode(pairs, tokenizer, cfg)
        _write_cached(path, enc, settings)
    warn_if_cut(enc, cfg, tag)
    return enc


def _read_cached(path: Path) -> Encoded | None:
    """A cache entry, or None (with a warning) when it is damaged or from an older layout: it is rebuilt."""
    try:
        with np.load(path, allow_pickle=False) as blob:
            offsets = blob["offsets"]
            flat = blob["flat"]
            prompt_lengths = blob["prompt_lengths"]
            if len(offsets) != len(prompt_lengths) + 1 or (len(offsets) and offsets[-1] != len(flat)):
                raise ValueError("its arrays do not fit together")
            ids = [flat[offsets[i]: offsets[i + 1]] for i in range(len(offsets) - 1)]
            return Encoded(ids, prompt_lengths, int(blob["dropped"]), int(blob["truncated"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("tokenized-data cache entry '%s' is damaged or outdated (%s: %s); rebuilding it",
                    path, type(exc).__name__, str(exc)[:200])
        return None


def _write_cached(path: Path, enc: Encoded, settings: list[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in enc.input_ids])]).astype(np.int64)
    flat = np.concatenate(enc.input_ids) if enc.input_ids else np.zeros(0, np.int32)
    # A unique temporary name: several trials on one machine may encode the same data at the same time.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, flat=flat, offsets=offsets, prompt_lengths=enc.prompt_lengths,
                     dropped=np.array(enc.dropped), truncated=np.array(enc.truncated))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_json(path.with_suffix(".json"), {"examples": len(enc), "settings": [str(s) for s in settings]})


# ----------------------------------------------------------------------------------------------- batching


def batch_indices(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool, shuffle: bool = True
) -> list[list[int]]:
    """Index batches for one epoch. Length-grouped: shuffle, sort within chunks of 50 batches by length
    (so a batch holds similar lengths and little padding), then shuffle the batch order."""
    order = list(range(len(lengths)))
    rng = random.Random(seed * 1_000_003 + epoch)
    if shuffle:
        rng.shuffle(order)
    if group_by_length:
        chunk = batch_size * 50
        order = [i for s in range(0, len(order), chunk)
                 for i in sorted(order[s: s + chunk], key=lambda i: -lengths[i])]
    batches = [order[s: s + batch_size] for s in range(0, len(order), batch_size)]
    if shuffle and group_by_length:
        rng.shuffle(batches)
    return batches


def collate(enc: Encoded, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example of this batch; padding gets label -100 and attention 0."""
    width = max(len(enc.input_ids[i]) for i in indices)
    input_ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    labels = torch.full((len(indices), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        n = len(enc.input_ids[i])
        input_ids[row, :n] = torch.from_numpy(enc.input_ids[i].astype(np.int64))
        labels[row, :n] = torch.from_numpy(enc.labels(i))
        attention[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def iterate_batches(
    enc: Encoded, batch_size: int, pad_id: int, seed: int, epoch: int, group_by_length: bool, shuffle: bool = True
) -> Iterator[dict[str, torch.Tensor]]:
    for indices in batch_indices(enc.lengths(), batch_size, seed, epoch, group_by_length, shuffle):
        yield collate(enc, indices, pad_id)
