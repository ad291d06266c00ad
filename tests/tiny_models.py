"""Tiny randomly initialised causal LMs (Llama and Gemma 3 shapes) with a small BPE tokenizer trained on
the embedded corpus: real transformers models, built in seconds, for unit and driver tests."""

from __future__ import annotations

from pathlib import Path

import torch

from harness.data import CORPUS_DIR

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]


def build_tokenizer(vocab_size: int = 600):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    lines = []
    for path in sorted(CORPUS_DIR.glob("*.tsv")):
        for line in path.read_text(encoding="utf-8").splitlines():
            lines.extend(line.split("\t"))
    lines += ["English:", "Turkish:", "Translate English to Turkish."]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def tiny_config(kind: str, vocab_size: int):
    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True,
                  # Larger than the default 0.02 so the tied head can express confident predictions
                  # and a few steps visibly reduce the loss.
                  initializer_range=0.2)
    if kind == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common)
    if kind == "gemma3":
        from transformers import Gemma3TextConfig

        return Gemma3TextConfig(**common, head_dim=16, sliding_window=32,
                                layer_types=["sliding_attention", "full_attention"])
    raise ValueError(kind)


def build_tiny_model(folder: Path, kind: str = "llama", seed: int = 0) -> Path:
    """Write a tiny random model + tokenizer with save_pretrained (safetensors) and return the folder."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind, len(tokenizer)))
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    import sys

    print(build_tiny_model(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "llama"))
