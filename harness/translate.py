"""`python -m harness.translate`: English in, Turkish out, with a trained adapter on its base model.

The adapter is the leaderboard's best (`--best`, from results/best.json), any trial's `adapter/` folder
(`--adapter`), or none (`--no-adapter`, the zero-shot base model). The trial's config.json beside the adapter
says which base model it was trained on and with which prompt, so translation here uses exactly the prompt
and the generation code (`harness.evaluation.translate`) that produced the leaderboard's scores.

Only safetensors weights are ever loaded, never pickle files.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from harness import reading
from harness.config import BenchConfig, DataConfig, EvalConfig, ModelConfig, config_from_dict
from harness.errors import BenchError, closest
from harness.io import atomic_write_dir, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

BEST_FILE = "best.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"
TRIAL_CONFIG = "config.json"
EXIT_WORDS = {"exit", "quit"}
PROMPT = "en> "
NO_RUNS = "no runs yet: run python run_benchmark.py --techniques all first"
DAMAGED_ADAPTER = ("The adapter folder is damaged (an interrupted copy or a full disk?): copy it again, train the "
                   "trial again, or use another trial's adapter.")

EXAMPLES = """examples:
  python -m harness.translate --best --text "The weather is nice today."
  echo "The weather is nice today." | python -m harness.translate --best
  python -m harness.translate --best --model smollm2-135m --input talk.en --output talk.tr
  python -m harness.translate --adapter results/RUN/trials/TRIAL/adapter --text "Good morning."
  python -m harness.translate --best --no-adapter --text "Good morning."     (the zero-shot base model)
  python -m harness.translate --no-adapter --base-model gemma-3-270m --text "Good morning."
  python -m harness.translate --best --num-beams 4 --input - < talk.en
  python -m harness.translate --best --temperature 0.7 --top-p 0.9 --text "How are you?"
  python -m harness.translate --adapter results/RUN/trials/TRIAL/adapter --merge-and-save merged/
  python -m harness.translate --best          (in a terminal: an interactive en> prompt; exit, quit or
                                              Ctrl-D ends; --interactive forces it on a pipe too)

Without --adapter or --no-adapter, --best is implied. Blank input lines give blank output lines, so the
output lines up with the input line by line. Decoding is greedy unless --temperature, --top-k or --top-p
is given.
"""


# -------------------------------------------------------------------------------------------- the CLI


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m harness.translate",
        description="Translate English to Turkish with a fine-tuned adapter from a benchmark run (by default\n"
                    "the leaderboard's best), a given adapter folder, or the base model alone.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = p.add_argument_group("which model")
    pick = which.add_mutually_exclusive_group()
    pick.add_argument("--best", action="store_true",
                      help="the best adapter in RESULTS_DIR/best.json: overall, or of --model [default]")
    pick.add_argument("--adapter", metavar="PATH", help="an adapter folder: a trial's adapter/ folder")
    which.add_argument("--model", metavar="NAME", help="with --best: the best adapter of this base model")
    which.add_argument("--base-model", metavar="NAME",
                       help="base model (embedded name, hub id or folder): overrides the trial's config, or is "
                            "required when the adapter has no config.json beside it")
    which.add_argument("--no-adapter", action="store_true",
                       help="the base model alone (needs --base-model, or --best/--adapter for the trial config)")
    which.add_argument("--results-dir", default="results", help="where best.json lives [results]")
    which.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub")
    which.add_argument("--device", default="auto", help="auto, cpu, cuda or mps [auto]")

    io = p.add_argument_group("input and output")
    source = io.add_mutually_exclusive_group()
    source.add_argument("--text", action="append", metavar="SENTENCE",
                        help="one English sentence (repeatable)")
    source.add_argument("--input", metavar="FILE", help="one English sentence per line; '-' reads stdin")
    source.add_argument("--interactive", action="store_true",
                        help="translate line by line as lines arrive, also through a pipe; 'exit' ends")
    io.add_argument("--output", metavar="FILE", help="write the Turkish lines here [stdout]")

    gen = p.add_argument_group("generation")
    gen.add_argument("--batch-size", type=int,
                     help="sentences per generate call [the trial's eval.generation_batch_size, as in the run: "
                          f"{EvalConfig().generation_batch_size} unless the run set it]")
    gen.add_argument("--max-new-tokens", type=int, default=64, help="upper bound per translation [64]")
    gen.add_argument("--num-beams", type=int, default=1, help="beam search width [1: greedy]")
    gen.add_argument("--temperature", type=float, help="sample with this temperature [greedy]")
    gen.add_argument("--top-k", type=int, help="sample from the k most likely tokens [greedy]")
    gen.add_argument("--top-p", type=float, help="nucleus sampling threshold in (0, 1] [greedy]")
    gen.add_argument("--seed", type=int, default=0, help="random seed for sampling [0]")

    p.add_argument("--merge-and-save", metavar="DIR",
                   help="LoRA-family adapters only: fold the adapter into the base weights and save a plain "
                        "model (safetensors) with its tokenizer to DIR")
    p.add_argument("-v", "--verbose", action="store_true", help="info logging (and library warnings)")
    return p


@dataclass
class Target:
    """What to load: the base model config, the prompt settings, and the adapter (None: the base alone)."""

    model_cfg: ModelConfig
    data_cfg: DataConfig
    adapter: Path | None
    technique: str | None = None
    hp: dict[str, Any] = field(default_factory=dict)
    peft_type: str | None = None
    trained_on: str | None = None  # base_model_name_or_path from adapter_config.json
    origin: str = ""
    # The batch the run's evaluation translated with, so a file translates as fast as the run's test set.
    batch_size: int = field(default_factory=lambda: EvalConfig().generation_batch_size)
    note: str = ""  # a one-line caveat about the choice (the best is not significantly ahead of its runner-up)


@dataclass
class Translator:
    """A loaded model with its prompt settings and generation options; call it with source lines."""

    model: Any
    tokenizer: Any
    data_cfg: DataConfig
    batch_size: int = 16
    max_new_tokens: int = 64
    num_beams: int = 1
    sampling: dict[str, Any] = field(default_factory=dict)

    def __call__(self, lines: Sequence[str], cut: list[bool] | None = None) -> list[str]:
        """One Turkish line per input line; blank lines stay blank (line alignment is kept). `cut`, when
        given, gets one flag per line: True where the translation was truncated at max_new_tokens."""
        from harness.evaluation import translate

        # NFC like every file the harness reads: --text and interactive lines do not pass through a file.
        texts = [reading.normalise_text(line).strip() for line in lines]
        todo = [i for i, t in enumerate(texts) if t]
        outputs = [""] * len(texts)
        flags = [False] * len(texts)
        if todo:
            done: list[bool] = []
            hyps = translate(self.model, self.tokenizer, [texts[i] for i in todo], self.data_cfg, self.batch_size,
                             self.max_new_tokens, self.num_beams, cut=done, **self.sampling)
            for i, hyp, was_cut in zip(todo, hyps, done):
                outputs[i] = one_line(hyp)
                flags[i] = was_cut
        if cut is not None:
            cut.extend(flags)
        return outputs

    def warn_truncated(self, cut: Sequence[bool]) -> None:
        """One warning for one input: how many lines were truncated, and to how many tokens."""
        if any(cut):
            log.warning("%d of %d input lines were truncated: their translations stopped at --max-new-tokens=%d "
                        "tokens before the model ended them. Raise --max-new-tokens, or split long lines.",
                        sum(cut), len(cut), self.max_new_tokens)


def check_options(args: argparse.Namespace) -> None:
    """Combinations and ranges argparse cannot check, as BenchErrors that say the fix."""
    if args.model and args.adapter:
        raise BenchError(f"--model {args.model}: --model picks among the best adapters of best.json and "
                         "cannot be combined with --adapter. Drop one of them (use --base-model to change the "
                         "base model of --adapter).")
    if args.base_model and not (args.adapter or args.best or args.no_adapter or args.model):
        raise BenchError(f"--base-model {args.base_model}: say which adapter goes on it: --adapter PATH, --best, "
                         "or --no-adapter for the base model alone.")
    if args.no_adapter and args.merge_and_save:
        raise BenchError(f"--merge-and-save {args.merge_and_save}: there is nothing to merge with --no-adapter. "
                         "Give --adapter PATH or --best.")
    if args.interactive and args.output:
        raise BenchError(f"--output {args.output}: the interactive mode prints each translation as it goes; "
                         "drop --output, or use --input FILE --output FILE for files.")
    rules = [
        ("--batch-size", args.batch_size, args.batch_size is None or args.batch_size >= 1, "an integer >= 1, e.g. 16"),
        ("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 1, "an integer >= 1, e.g. 64"),
        ("--num-beams", args.num_beams, args.num_beams >= 1, "an integer >= 1 (1 is greedy)"),
        ("--temperature", args.temperature, args.temperature is None or args.temperature >= 0, "a number >= 0"),
        ("--top-k", args.top_k, args.top_k is None or args.top_k >= 0, "an integer >= 0"),
        ("--top-p", args.top_p, args.top_p is None or 0 < args.top_p <= 1, "a number in (0, 1]"),
    ]
    for option, value, ok, rule in rules:
        if not ok:
            raise BenchError(f"{option} {value}: it must be {rule}.")


# --------------------------------------------------------------------------------- finding the adapter


def _adapter_path(entry: dict[str, Any], results_dir: Path) -> Path:
    """The recorded adapter path (relative to where the run was started), else the same trial under
    --results-dir (the results folder was moved or this runs from elsewhere)."""
    recorded = Path(str(entry.get("adapter", "")))
    if recorded.is_dir():
        return recorded
    moved = results_dir / str(entry.get("run", "")) / "trials" / str(entry.get("trial", "")) / "adapter"
    return moved if moved.is_dir() else recorded


def best_entry(results_dir: Path, model: str | None = None) -> dict[str, Any]:
    """The overall best entry of results/best.json, or the best one of `model`."""
    from harness.leaderboard import _better

    path = results_dir / BEST_FILE
    if not path.is_file():
        raise BenchError(f"--best: {NO_RUNS} (there is no '{path}'). Or give an adapter folder with "
                         "--adapter PATH, or point --results-dir at the folder that holds best.json.")
    registry = reading.read_json(path, "--best", "Re-create it with python -m harness.leaderboard, or give "
                                                 "--adapter PATH.")
    entries = list((registry.get("by_model_dataset") or {}).values()) if isinstance(registry, dict) else []
    if model is None:
        entry = registry.get("overall") if isinstance(registry, dict) else None
        if not entry:
            raise BenchError(f"--best: {NO_RUNS} ('{path}' has no best adapter: no trial has finished with "
                             "an adapter yet).")
        return entry
    mine = [e for e in entries if model in (e.get("model"), Path(str(e.get("model", ""))).name)]
    if not mine:
        models = sorted({str(e.get("model")) for e in entries})
        raise BenchError(f"--model {model}: '{path}' has no best adapter for this base model."
                         f"{closest(model, models)} Models that have one: {', '.join(models) or 'none'}.")
    best = None
    for entry in mine:
        if best is None or _better(entry.get("value"), best.get("value"), entry.get("metric", "chrf")):
            best = entry
    return best


def check_adapter(folder: Path, option: str) -> dict[str, Any]:
    """A usable peft adapter folder: adapter_config.json (valid JSON) and safetensors weights. Returns the
    adapter config. Pickle weights (adapter_model.bin) are refused: unpickling can run arbitrary code."""
    where = f"{option} {folder}"
    if not folder.exists():
        raise BenchError(f"{where}: the folder does not exist. Give a trial's adapter folder, e.g. "
                         "results/RUN/trials/TRIAL/adapter, or use --best.")
    if not folder.is_dir():
        hint = f" Did you mean its folder '{folder.parent}'?" if folder.name == ADAPTER_WEIGHTS else ""
        raise BenchError(f"{where}: this is a file, not an adapter folder.{hint}")
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file():
        hint = (f" It looks like a trial folder: use '{folder / 'adapter'}'."
                if (folder / "adapter" / ADAPTER_CONFIG).is_file() else
                " An adapter folder is what peft's save_pretrained writes (a trial's adapter/ folder).")
        raise BenchError(f"{where}: the folder has no {ADAPTER_CONFIG}, so it is not a peft adapter.{hint}")
    adapter_cfg = reading.read_json(config_path, where, DAMAGED_ADAPTER)
    if not isinstance(adapter_cfg, dict) or "peft_type" not in adapter_cfg:
        raise BenchError(f"{where}: {ADAPTER_CONFIG} is not a peft adapter config (it has no 'peft_type'). "
                         "Give a folder written by peft's save_pretrained.")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        if (folder / PICKLE_WEIGHTS).is_file():
            raise BenchError(f"{where}: the folder has only {PICKLE_WEIGHTS}, a pickle file, which this tool never "
                             f"loads (unpickling can run arbitrary code). It needs {ADAPTER_WEIGHTS}: re-save the "
                             "adapter with save_pretrained(folder, safe_serialization=True).")
        raise BenchError(f"{where}: the folder has no {ADAPTER_WEIGHTS}, so the adapter weights are missing. "
                         "Train the trial again or use another trial's adapter.")
    reading.check_safetensors(folder / ADAPTER_WEIGHTS, where, DAMAGED_ADAPTER)
    return adapter_cfg


def read_trial_config(adapter: Path, option: str) -> dict[str, Any] | None:
    """The trial's config.json beside the adapter folder (None when there is none)."""
    path = adapter.parent / TRIAL_CONFIG
    if not path.is_file():
        return None
    record = reading.read_json(path, f"{option} {adapter}", "Give the base model with --base-model NAME, or "
                                                            "use another trial.")
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        return None  # a config.json of something else (e.g. a model folder): not a trial record
    return record


def bench_config(record: dict[str, Any], where: str) -> BenchConfig:
    try:
        return config_from_dict(record["config"])
    except BenchError as exc:
        raise BenchError(f"{where}: the trial's config.json cannot be read back ({exc}) Give the base model "
                         "with --base-model NAME.") from None


def resolve_target(args: argparse.Namespace) -> Target:
    """Which base model, prompt settings and adapter to load, from the options, best.json and the trial's
    config.json. Checks everything that can be checked before loading a model."""
    results_dir = Path(args.results_dir)
    adapter: Path | None = None
    option = "--adapter"
    origin = note = ""
    if args.adapter:
        adapter = Path(args.adapter).expanduser()
        origin = f"adapter {adapter}"
    elif args.best or args.model or not (args.no_adapter and args.base_model):
        if args.no_adapter and not (args.best or args.model):
            raise BenchError("--no-adapter: the base model is unknown. Give it with --base-model NAME, or add "
                             "--best (or --adapter PATH) to take the base model and prompt from that trial.")
        entry = best_entry(results_dir, args.model)
        adapter = _adapter_path(entry, results_dir)
        option = "--best" if args.model is None else f"--best --model {args.model}"
        origin = (f"best adapter{' of ' + args.model if args.model else ''}: {entry.get('technique')} "
                  f"{entry.get('params', '')} ({entry.get('run')}/{entry.get('trial')}, "
                  f"{entry.get('metric')} {entry.get('value')})")
        note = tie_note(entry)
        if not adapter.exists():
            raise BenchError(f"{option}: the adapter recorded in '{results_dir / BEST_FILE}', '{adapter}', does "
                             "not exist any more (deleted or moved). Run a benchmark again, point --results-dir "
                             "at the moved results folder, or give --adapter PATH.")

    adapter_cfg: dict[str, Any] = {}
    record = None
    if adapter is not None:
        adapter_cfg = check_adapter(adapter, option)
        record = read_trial_config(adapter, option)
    batch_size = EvalConfig().generation_batch_size
    if record is not None:
        cfg = bench_config(record, f"{option} {adapter}")
        model_cfg, data_cfg, batch_size = cfg.model, cfg.data, cfg.eval.generation_batch_size
    elif args.base_model:  # no trial record: the harness's default prompt settings
        model_cfg, data_cfg = ModelConfig(name=args.base_model), DataConfig()
    else:
        trained_on = adapter_cfg.get("base_model_name_or_path")
        hint = f" (its {ADAPTER_CONFIG} says it was trained on '{trained_on}')" if trained_on else ""
        raise BenchError(f"{option} {adapter}: there is no trial config.json beside it "
                         f"('{adapter.parent / TRIAL_CONFIG}'), so its base model is unknown. Give it with "
                         f"--base-model NAME{hint}.")
    if args.base_model:
        model_cfg = dataclasses.replace(model_cfg, name=args.base_model)
    if args.trust_remote_code:
        model_cfg = dataclasses.replace(model_cfg, trust_remote_code=True)

    technique = (record or {}).get("technique")
    hp = dict((record or {}).get("hp") or {})
    target = Target(model_cfg, data_cfg, None if args.no_adapter else adapter, technique, hp,
                    adapter_cfg.get("peft_type"), adapter_cfg.get("base_model_name_or_path"),
                    "base model alone" if args.no_adapter else origin, batch_size,
                    "" if args.no_adapter else note)
    if args.merge_and_save:
        check_mergeable(target, args.merge_and_save)
        if technique and technique_model_cfg(model_cfg, technique, hp, option) != model_cfg:
            log.info("merging into the base model as stored (not re-quantized as %s trained on it)", technique)
    elif target.adapter is not None and technique:
        target.model_cfg = technique_model_cfg(target.model_cfg, technique, hp, f"{option} {adapter}")
    return target


def tie_note(entry: dict[str, Any]) -> str:
    """A note when best.json says the best adapter is not significantly better than the runner-up."""
    if entry.get("significant_vs_runner_up") is not False:
        return ""
    return (f"note: the best adapter ({entry.get('technique')} {entry.get('params', '')}".rstrip() +
            f") is not significantly better than the runner-up ({entry.get('runner_up')}, p = "
            f"{entry.get('p_vs_runner_up'):.3f} >= {entry.get('significance_level', 0.05)}); either would do")


def technique_model_cfg(model_cfg: ModelConfig, technique: str, hp: dict[str, Any], where: str) -> ModelConfig:
    """The base model loaded the way the technique trained on it (QLoRA: a 4-bit base), like training.py."""
    from techniques import registry

    try:
        plugin = registry.get(technique)
    except BenchError as exc:
        raise BenchError(f"{where}: the trial was trained with the technique '{technique}', which is not "
                         f"installed here ({exc})") from None
    return dataclasses.replace(model_cfg, **plugin.model_overrides(hp))


def is_mergeable(target: Target) -> bool:
    """The trial's technique says whether its update folds into the base weights; an adapter without a trial
    record is asked through peft's config class (prompt-learning adapters add tokens, not weights)."""
    from techniques import registry

    if target.technique:
        try:
            return registry.get(target.technique).mergeable
        except BenchError:
            pass  # a plugin not installed here: peft can still tell
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING, PromptLearningConfig

    config_cls = PEFT_TYPE_TO_CONFIG_MAPPING.get(str(target.peft_type))
    return config_cls is not None and not issubclass(config_cls, PromptLearningConfig)


def check_mergeable(target: Target, out_dir: str) -> None:
    if target.adapter is None:
        raise BenchError(f"--merge-and-save {out_dir}: there is no adapter to merge. Give --adapter PATH or --best.")
    if not is_mergeable(target):
        name = target.technique or target.peft_type
        raise BenchError(f"--merge-and-save {out_dir}: the adapter is {name} (peft type {target.peft_type}); only "
                         "adapters that change the base weights (LoRA-family and the other weight adapters) can be "
                         f"merged into them. Translate with the adapter instead: drop --merge-and-save.")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BenchError(f"--merge-and-save {out_dir}: the path exists and is not an empty folder. Choose a new "
                         "folder, or remove the old one first.")


# ------------------------------------------------------------------------------------------- loading


def load_translator(target: Target, device: str, args: argparse.Namespace) -> Translator:
    """The base model (device and dtype as the harness chooses them) with the adapter on top."""
    from harness.models import load_model

    loaded = load_model(target.model_cfg, device)
    model = loaded.model
    if target.adapter is not None:
        from techniques import registry
        from techniques.base import Technique

        # The technique reloads its own export; an adapter without a trial record is a plain peft adapter.
        plugin = registry.get(target.technique) if target.technique else Technique()
        try:
            model = plugin.load(model, target.adapter)
        except (RuntimeError, ValueError, KeyError) as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
            first = next((line for line in lines if "mismatch" in line), lines[0])[:300].rstrip(".:")
            trained_on = f" (it was trained on '{target.trained_on}')" if target.trained_on else ""
            raise BenchError(
                f"--adapter {target.adapter}: the adapter does not match the base model '{target.model_cfg.name}'"
                f"{trained_on}: {first}. Give the base model it was trained on with --base-model NAME, or drop "
                "--base-model to use the one in the trial's config.json."
            ) from None
    model.eval()
    log.info("translating with %s on %s", target.origin or target.model_cfg.name, device)
    sampling = {k: v for k, v in (("temperature", args.temperature), ("top_k", args.top_k),
                                  ("top_p", args.top_p)) if v is not None}
    return Translator(model, loaded.tokenizer, target.data_cfg, args.batch_size or target.batch_size,
                      args.max_new_tokens, args.num_beams, sampling)


def merge_and_save(translator: Translator, target: Target, out_dir: Path) -> Path:
    """Fold the LoRA update into the base weights and save a plain model + tokenizer (safetensors)."""
    merged = translator.model.merge_and_unload()
    translator.model = merged

    def write(folder: Path) -> None:
        merged.save_pretrained(str(folder), safe_serialization=True)
        translator.tokenizer.save_pretrained(str(folder))
        atomic_write_json(folder / "peft_bench_merge.json", {
            "adapter": str(target.adapter), "base_model": target.model_cfg.name, "technique": target.technique,
            "hp": target.hp, "peft_type": target.peft_type, "data": dataclasses.asdict(target.data_cfg),
        })

    atomic_write_dir(out_dir, write)
    log.warning("merged model saved to %s; translate with it: python -m harness.translate --no-adapter "
                "--base-model %s", out_dir, out_dir)
    return out_dir


# ------------------------------------------------------------------------------------ input and output


def split_lines(text: str) -> list[str]:
    """Lines split at '\\n' (and '\\r\\n') only: str.splitlines also breaks at characters such as U+0085 or
    U+2028 that a line-by-line file can hold, which would shift every later line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def one_line(text: str) -> str:
    """A translation as exactly one output line, whatever line-break characters the model produced."""
    return " ".join(text.splitlines()).strip()


def read_input(path: str) -> list[str]:
    """Lines of --input FILE ('-': stdin), without their line ends."""
    if path == "-":
        return read_stdin()
    file = Path(path).expanduser()
    if not file.exists():
        raise BenchError(f"--input {path}: the file does not exist. Give a text file with one English sentence "
                         "per line, or '-' to read stdin.")
    if not file.is_file():
        raise BenchError(f"--input {path}: this is not a file. Give a text file with one sentence per line.")
    return split_lines(reading.read_text(file, "--input"))


def read_stdin() -> list[str]:
    """Lines of stdin, decoded like a file (a byte-order mark dropped, NFC)."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a text stream without bytes underneath (e.g. replaced in a test)
        return split_lines(reading.normalise_text(sys.stdin.read()))
    return split_lines(reading.decode_text(buffer.read(), "--input -", "stdin"))


def _chunks(lines: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(lines), size):
        yield lines[start: start + size]


def translate_all(translator: Translator, lines: Sequence[str], output: str | None, stdout: TextIO) -> int:
    """Batch mode: every line translated, in chunks of several batches (length-sorted within a chunk); to
    stdout as each chunk finishes, or atomically to --output at the end. A terminal gets one progress bar."""
    from tqdm.auto import tqdm

    chunk = max(translator.batch_size * 8, 64)
    progress = len(lines) > translator.batch_size and sys.stderr.isatty()
    results: list[str] = []
    cut: list[bool] = []
    with tqdm(total=len(lines), desc="translate", unit="line", disable=not progress, file=sys.stderr) as bar:
        for part in _chunks(lines, chunk):
            out = translator(part, cut=cut)
            results.extend(out)
            bar.update(len(part))
            if output is None:
                stdout.write("".join(line + "\n" for line in out))
                stdout.flush()
    translator.warn_truncated(cut)
    if output is not None:
        atomic_write_text(Path(output).expanduser(), "".join(line + "\n" for line in results))
        log.info("%d lines written to %s", len(results), output)
    return 0


def interactive(translator: Translator, stdin: TextIO, stdout: TextIO) -> int:
    """One line in, one Turkish line out, immediately; 'exit', 'quit' or end of input stops. The prompt is
    shown only to a person at a terminal, so a program driving this through a pipe gets only translations."""
    terminal = stdin.isatty()
    if terminal:
        print("English -> Turkish. Type a sentence; exit, quit or Ctrl-D ends.", file=sys.stderr)
    while True:
        if terminal:
            try:
                line = input(PROMPT)
            except EOFError:
                print(file=sys.stderr)
                return 0
        else:
            line = stdin.readline()
            if not line:
                return 0
        text = line.rstrip("\n").strip()
        if text.lower() in EXIT_WORDS:
            return 0
        cut: list[bool] = []
        stdout.write(translator([text], cut=cut)[0] + "\n")
        stdout.flush()
        translator.warn_truncated(cut)


# --------------------------------------------------------------------------------------------- main


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        # Library deprecation notices are for developers; stderr here is for the user's errors.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            import transformers

            transformers.logging.set_verbosity_error()
            if not sys.stderr.isatty():  # no progress bars in logs and pipes
                transformers.utils.logging.disable_progress_bar()
        except (ImportError, AttributeError):  # pragma: no cover - transformers is a dependency
            pass


def run(args: argparse.Namespace) -> int:
    """Everything after parsing: resolve, read input, load, translate (and merge)."""
    check_options(args)
    target = resolve_target(args)
    if target.note:
        print(target.note, file=sys.stderr)
    from harness.devices import resolve_device

    device = resolve_device(args.device)
    lines: list[str] | None = None
    mode = "batch"
    if args.text:
        lines = list(args.text)
    elif args.input:
        lines = read_input(args.input)
    elif args.interactive:
        mode = "interactive"
    elif args.merge_and_save:
        mode = "none"  # only the merge: nothing to translate unless asked
    elif sys.stdin.isatty():
        mode = "interactive"
    else:
        lines = read_stdin()

    import torch

    torch.manual_seed(args.seed)
    translator = load_translator(target, device, args)
    if args.merge_and_save:
        merge_and_save(translator, target, Path(args.merge_and_save).expanduser())
    if mode == "interactive":
        return interactive(translator, sys.stdin, sys.stdout)
    if lines is not None:
        return translate_all(translator, lines, args.output, sys.stdout)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return BenchError.exit_code
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into `head`: the reader has gone, nothing left to say
        return 0


if __name__ == "__main__":
    sys.exit(main())
