"""lit-eraser: train LoRA adapters for LLM recommenders in Lightning and unlearn training items from
them with influence functions (LLMEraser), without retraining."""

__version__ = "0.1.0"
