"""Stage 2: GPTQ quantization (GPTQModel's math and format, fraudq's batched scheduler)."""
