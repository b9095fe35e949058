"""Where a model comes from, read without mlx: Hugging Face Hub ids (the HF cache), GGUF file headers, and what a
GGUF's blocks become in MLX (numpy).

Turning a GGUF into an mlx-lm folder needs mlx and lives in `farensed.engine.gguf`. Imports `farensed.storage`.
"""
