"""A run's data, tokenized once: the token cache first, the tokenizer only when something must be tokenized."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from farensed.engine import console
from farensed.engine.data import TokenizedSet, silent_examples, tokenize_file
from farensed.engine.tokcache import CACHE_DIR, TokenCache
from farensed.errors import SpecError
from farensed.i18n import _, ngettext
from farensed.storage.digest import sha256_file


def tokenizer_of(model_path: Path, model_config: dict):
    """mlx-lm's tokenizer of a model folder (with the config's end-of-sequence ids)."""
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(Path(model_path), eos_token_ids=model_config.get("eos_token_id"))


def load_datasets(spec, ws, model_path: Path, model_config: dict, clock) -> tuple[TokenizedSet, TokenizedSet, dict]:
    """The training and validation sets (from the token cache when it has them) and the data files' digests."""
    console.say("\n" + _("A carregar datasets..."))
    train_path, valid_path = ws.resolve(spec.data.train), ws.resolve(spec.data.valid)
    digests = {"train": sha256_file(train_path), "valid": sha256_file(valid_path)}
    console.say("\n" + _("A tokenizar..."))
    settings = {"max_seq_length": spec.max_seq_length, "mask_prompt": spec.mask_prompt}  # what changes the tokens
    cache_ = TokenCache(ws.root / "checkpoints_qlora" / CACHE_DIR, model_path, settings)

    @cache
    def tokenizer():  # loaded on first use: a start-up with every token cached never needs it
        return tokenizer_of(model_path, model_config)

    def tokenize(path: Path):
        return lambda: tokenize_file(path, tokenizer(), spec.max_seq_length, spec.mask_prompt)

    train_set, hit_train = cache_.get(digests["train"], tokenize(train_path))
    valid_set, hit_valid = cache_.get(digests["valid"], tokenize(valid_path))
    clock.mark("tokens_ready", tokens_cached=hit_train and hit_valid)
    if hit_train and hit_valid:
        console.say(_("Tokens em cache (checkpoints_qlora/.tokens): tokenização saltada"))
    console.say(_("Amostras de treino: {count}").format(count=len(train_set)))
    console.say(_("Amostras de validação: {count}").format(count=len(valid_set)))
    console.say(_("✅ Tokens de treino: {count}").format(count=sum(map(len, train_set.tokens))))
    console.say(_("✅ Tokens de validação: {count}").format(count=sum(map(len, valid_set.tokens))))
    truncated = train_set.truncated + valid_set.truncated
    if truncated:
        console.say(
            _("⚠  {truncated} exemplos mais longos que max_seq_length={max_seq_length} foram truncados").format(
                truncated=truncated, max_seq_length=spec.max_seq_length
            )
        )
    for key, data in (("train", train_set), ("valid", valid_set)):
        _check_counted(key, data, spec.max_seq_length)
    return train_set, valid_set, digests


def _check_counted(key: str, data: TokenizedSet, max_seq_length: int) -> None:
    """A set whose every prompt fills max_seq_length would train on nothing and validate to NaN: refused now, before
    a run that would 'succeed'; a few such examples are said, since they count for nothing."""
    silent = silent_examples(data, max_seq_length)
    if silent and silent == len(data):
        raise SpecError(
            _(
                "data.{key}: nenhum dos {count} exemplos tem um token da resposta dentro de "
                "max_seq_length={max_seq_length} (o prompt ocupa-o todo); aumente max_seq_length ou encurte os prompts"
            ).format(key=key, count=len(data), max_seq_length=max_seq_length)
        )
    if silent:
        console.say(
            ngettext(
                "⚠  data.{key}: {count} exemplo sem nenhum token da resposta dentro de max_seq_length={max_seq_length}"
                " não conta para a loss",
                "⚠  data.{key}: {count} exemplos sem nenhum token da resposta dentro de max_seq_length="
                "{max_seq_length} não contam para a loss",
                silent,
            ).format(key=key, count=silent, max_seq_length=max_seq_length)
        )
