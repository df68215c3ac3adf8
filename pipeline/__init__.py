"""modalrec: multimodal recommendation with frozen or fine-tuned pretrained encoders.

The library lives in this package (`pipeline.data`, `pipeline.config`, `pipeline.cli`);
encoders live in the sibling package `encoders`.
"""

__version__ = "0.1.0"
