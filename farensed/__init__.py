"""farense: resumable QLoRA fine-tuning on MLX, a file-queue daemon and its CLI."""

__version__ = "0.1.0"

# Exit code of a training child that stopped on a signal after writing a checkpoint:
# "interrupted, resumable" (sysexits' EX_TEMPFAIL, as mail queues use it).
EXIT_RESUMABLE = 75
