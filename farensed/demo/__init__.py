"""The demo: a tiny Mistral-architecture model built offline, Portuguese demo data about Faro, the demo job.

Builds with mlx-lm (in the process that asks for it); tests use the same model through a session fixture.
"""
