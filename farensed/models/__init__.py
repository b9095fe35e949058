"""Where a model comes from, read without mlx: Hugging Face Hub ids (the HF cache) and GGUF file headers.

Turning a GGUF into an mlx-lm folder needs mlx and lives in `farensed.engine.gguf`. Imports `farensed.storage`.
"""
