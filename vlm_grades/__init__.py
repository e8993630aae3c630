"""vlm-grades: modality-aware gradient-based early stopping for vision-language fine-tuning."""

__version__ = "0.1.0"
