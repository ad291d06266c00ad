"""peft-bench: benchmark parameter-efficient fine-tuning techniques for English->Turkish translation."""

__version__ = "0.1.0"
