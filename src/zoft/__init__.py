"""zoft: fine-tune Hugging Face models by backprop (LoRA, full) and by MeZO (forward passes only)."""

__version__ = "0.1.0"
