"""fraudq: GPTQ-quantize a chat LLM classifier and measure what it cost."""

__version__ = "0.1.0"
