"""Deterministic demo data: a Portuguese chatbot for Faro, in mlx-lm's chat format."""

from __future__ import annotations

import random
from pathlib import Path

import orjson

from farensed.storage.atomic import atomic_write_bytes

# (topic as asked about, the chatbot's answer); the answers are what QLoRA learns to say
FACTS = [
    (
        "o Museu Municipal",
        "O Museu Municipal de Faro abre de terça a domingo, das 10h às 18h, no Convento de Nossa Senhora da Assunção.",
    ),
    ("a Praia de Faro", "A Praia de Faro fica na península do Ancão, a 10 km do centro; o autocarro 16 leva-o até lá."),
    (
        "o aeroporto",
        "O Aeroporto de Faro fica a 7 km do centro; os autocarros 14 e 16 ligam-no à cidade em 20 minutos.",
    ),
    ("a Sé de Faro", "A Sé de Faro fica no Largo da Sé, na Vila Adentro; a torre tem uma vista sobre a Ria Formosa."),
    (
        "a Ria Formosa",
        "A Ria Formosa é um parque natural de lagoas e ilhas; há passeios de barco a partir da Porta Nova.",
    ),
    (
        "a Capela dos Ossos",
        "A Capela dos Ossos fica na Igreja do Carmo e está aberta de segunda a sábado, das 10h às 17h.",
    ),
    (
        "a estação de comboios",
        "A estação de comboios de Faro fica no Largo da Estação, junto à marina, com ligações a Lisboa e Lagos.",
    ),
    ("a Ilha Deserta", "A Ilha Deserta chega-se de barco a partir do cais da Porta Nova; a viagem demora 45 minutos."),
    (
        "o Mercado Municipal",
        "O Mercado Municipal de Faro abre de segunda a sábado, das 7h às 15h, no Largo Dr. Francisco Sá Carneiro.",
    ),
    (
        "o Arco da Vila",
        "O Arco da Vila é a entrada da cidade velha, junto ao Jardim Manuel Bivar, com ninhos de cegonhas.",
    ),
    (
        "o Teatro das Figuras",
        "O Teatro das Figuras fica no Horta das Figuras e tem bilheteira aberta de terça a sábado à tarde.",
    ),
    (
        "a Universidade do Algarve",
        "A Universidade do Algarve tem os campus de Gambelas e da Penha; o autocarro 16 passa em Gambelas.",
    ),
    (
        "a biblioteca municipal",
        "A Biblioteca Municipal de Faro fica na Rua Dr. Ataíde Oliveira e abre de segunda a sexta, das 9h às 19h.",
    ),
    ("o Estádio Algarve", "O Estádio Algarve fica entre Faro e Loulé, a 8 km do centro, com estacionamento gratuito."),
    (
        "a Câmara Municipal",
        "A Câmara Municipal de Faro fica no Largo da Sé e atende o público de segunda a sexta, das 9h às 16h.",
    ),
    (
        "o centro de saúde",
        "O Centro de Saúde de Faro fica na Rua Brites de Almeida e está aberto todos os dias, das 8h às 20h.",
    ),
    (
        "a Feira de Santa Iria",
        "A Feira de Santa Iria realiza-se em outubro no Largo de São Francisco, com diversões e gastronomia.",
    ),
    (
        "o estacionamento",
        "Há parques de estacionamento no Largo de São Francisco e junto à marina; o da Sé é gratuito ao domingo.",
    ),
    ("as bicicletas", "As bicicletas partilhadas de Faro levantam-se na Doca e na estação, com aplicação da Câmara."),
    (
        "a marina",
        "A marina de Faro fica na Doca, junto ao Jardim Manuel Bivar, e é o ponto de partida dos passeios na ria.",
    ),
    (
        "o Palácio Estoi",
        "O Palácio de Estoi fica a 10 km de Faro, é hoje uma pousada e os jardins podem ser visitados.",
    ),
    ("as ruínas de Milreu", "As ruínas romanas de Milreu ficam em Estoi e abrem de terça a domingo, das 9h30 às 18h."),
    (
        "o Cemitério dos Judeus",
        "O Cemitério Judaico de Faro fica junto ao Estádio de São Luís e abre de segunda a sexta de manhã.",
    ),
    ("a gastronomia", "Em Faro prove o arroz de lingueirão, as amêijoas à Bulhão Pato e o doce fino de amêndoa."),
]

QUESTIONS = [
    "Qual é o horário {de_t}?",
    "Onde fica {t}?",
    "Fala-me sobre {t}.",
    "O que sabes sobre {t}?",
    "Como chego {a_t}?",
    "Podes dar-me informações sobre {t}?",
    "Preciso de ajuda com {t}.",
    "Que me dizes {de_t}?",
    "Queria saber mais sobre {t}.",
    "Tens indicações sobre {t}?",
]
VALID_QUESTIONS = 2  # phrasings of each topic held out for validation
HELD_OUT_TOPICS = 4  # topics (the last ones) seen only in validation: the gap measures generalisation

SYSTEM = "És o assistente virtual de Faro. Responde em português, de forma curta e correta."


CONTRACTIONS = {
    ("de", "o"): "do",
    ("de", "a"): "da",
    ("de", "os"): "dos",
    ("de", "as"): "das",
    ("a", "o"): "ao",
    ("a", "a"): "à",
    ("a", "os"): "aos",
    ("a", "as"): "às",
}


def _ask(template: str, topic: str) -> str:
    """Fill a question template with Portuguese contractions (de + o = do, a + a = à)."""
    article, rest = topic.split(" ", 1)
    return template.format(
        t=topic,
        de_t=f"{CONTRACTIONS[('de', article)]} {rest}",
        a_t=f"{CONTRACTIONS[('a', article)]} {rest}",
    )


def _example(topic: str, answer: str, template: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": _ask(template, topic)},
            {"role": "assistant", "content": answer},
        ]
    }


def demo_examples(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Train and valid examples, shuffled deterministically from `seed`."""
    rng = random.Random(seed)
    train, valid = [], []
    for n, (topic, answer) in enumerate(FACTS):
        templates = QUESTIONS[:]
        rng.shuffle(templates)
        if n >= len(FACTS) - HELD_OUT_TOPICS:
            valid += [_example(topic, answer, t) for t in templates[:3]]
            continue
        for i, template in enumerate(templates):
            (valid if i < VALID_QUESTIONS else train).append(_example(topic, answer, template))
    rng.shuffle(train)
    rng.shuffle(valid)
    return train, valid


def pretraining_text() -> list[str]:
    """Plain sentences (no chat template) the tiny base model is pre-trained on."""
    lines = [answer for _, answer in FACTS]
    lines += [_ask(q, topic) for topic, _ in FACTS for q in QUESTIONS[:3]]
    lines.append(SYSTEM)
    return lines


def _jsonl(records: list[dict]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def write_demo_data(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Write train.jsonl and valid.jsonl (atomically, identical bytes every time)."""
    train, valid = demo_examples(seed)
    paths = {"train": folder / "train.jsonl", "valid": folder / "valid.jsonl"}
    for key, records in (("train", train), ("valid", valid)):
        data = _jsonl(records)
        if not paths[key].is_file() or paths[key].read_bytes() != data:
            atomic_write_bytes(paths[key], data)
    return paths
