"""A model folder checked the way mlx-lm will read it, without importing mlx: what passes here loads at run time.

mlx-lm finds the weights with `glob(str(folder / "model*.safetensors"))` (a folder named with `[`, `*` or `?`
finds none), reads every tokenizer file transformers asks for (a FIFO among them blocks the run forever), maps
`config.json`'s `model_type` onto a module `mlx_lm.models.<type>` (looked up on disk here, never imported), and
cannot apply `messages` data without a chat template. Each problem is one SpecError line naming the file and the fix.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import re
import stat
from pathlib import Path

import orjson

from farensed.errors import SpecError
from farensed.i18n import _
from farensed.storage.regular import FileTooLarge, NotRegularFile, kind_of, open_regular, read_regular
from farensed.terminal import excerpt, safe

WEIGHTS_GLOB = "model*.safetensors"  # mlx_lm/utils.py load_model
GLOB_MAGIC_RE = re.compile(r"[*?[]")  # what glob.glob reads as a pattern
MODEL_TYPE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
MAX_ENTRIES = 10_000  # entries of a model folder looked at for FIFOs and devices
MAX_CONFIG_BYTES = 64 * 2**20  # tokenizer_config.json of large vocabularies reaches a few MB


def read_json_file(path: Path, label: str, limit: int = MAX_CONFIG_BYTES) -> object:
    """A JSON file of a model folder: a regular file, bounded, parsed; one SpecError line otherwise."""
    try:
        return orjson.loads(read_regular(path, limit))
    except (NotRegularFile, FileTooLarge) as exc:
        raise SpecError(f"{label}: {exc}") from None
    except orjson.JSONDecodeError as exc:
        raise SpecError(
            _("{label}: {path} não é JSON válido ({error})").format(label=label, path=path, error=safe(exc, 120))
        ) from None
    except OSError as exc:
        raise SpecError(
            _("{label}: não foi possível ler {path} ({strerror})").format(
                label=label, path=path, strerror=exc.strerror or safe(exc, 80)
            )
        ) from None


def _special_entries(folder: Path, label: str) -> None:
    """No FIFO, device or socket among the folder's files (transformers may open any of them)."""
    with os.scandir(folder) as entries:
        for n, entry in enumerate(entries):
            if n >= MAX_ENTRIES:
                return
            try:
                mode = os.stat(entry.path).st_mode  # through links: the HF cache's files are links to blobs
            except OSError:
                continue  # a dangling link: harmless unless it is a file mlx-lm needs (checked by name below)
            kind = kind_of(mode)
            if kind is not None and not entry.is_dir():
                raise SpecError(
                    _("{label}: {path} é {kind}, não um ficheiro; retire-o da pasta do modelo").format(
                        label=label, path=Path(entry.path), kind=kind
                    )
                )


def _weights(folder: Path, label: str) -> None:
    """Weights as mlx-lm globs them, each with a sane safetensors header covering the whole file."""
    files = sorted(folder.glob(WEIGHTS_GLOB))  # pathlib globs only the pattern, not the folder's own name
    if not files:
        raise SpecError(
            _("{label}: {path} não tem pesos ({pattern}, os ficheiros que o mlx-lm lê)").format(
                label=label, path=folder, pattern=WEIGHTS_GLOB
            )
        )
    for path in files:
        check_safetensors(path, label)


def check_safetensors(path: Path, label: str) -> None:
    """A regular file whose safetensors header is sane: length prefix, JSON, every tensor's offsets in the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with open_regular(path):  # a FIFO or folder is named as such, never opened by the reader
            pass
        with safe_open(str(path), framework="numpy") as st:
            st.keys()
    except NotRegularFile as exc:
        raise SpecError(f"{label}: {exc}") from None
    except (SafetensorError, OSError) as exc:
        raise SpecError(
            _("{label}: {path} não é um safetensors válido ({exc}); copie-o de novo").format(
                label=label, path=path, exc=safe(exc, 120)
            )
        ) from None


@functools.lru_cache(maxsize=1)
def _mlx_lm_models() -> tuple[Path, dict, dict] | None:
    """mlx-lm's models folder and its model_type remappings, read from its source (importing it loads mlx)."""
    spec = importlib.util.find_spec("mlx_lm")  # a top-level name: located, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    tables = {"MODEL_REMAPPING": {}, "MODEL_ARCHITECTURE_REMAPPING": {}}
    try:
        for node in ast.parse((root / "utils.py").read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                if node.targets[0].id in tables:
                    tables[node.targets[0].id] = ast.literal_eval(node.value)
    except (OSError, SyntaxError, ValueError):
        pass  # a newer layout: the module folder alone decides
    return root / "models", tables["MODEL_REMAPPING"], tables["MODEL_ARCHITECTURE_REMAPPING"]


def mlx_lm_module(config: dict) -> str | None:
    """The `mlx_lm.models` module mlx-lm would import for this config (its _get_classes), else None."""
    found = _mlx_lm_models()
    if found is None:
        return None
    models, remap, arch_remap = found
    model_type = config.get("model_type")
    architectures = config.get("architectures") or ()
    if isinstance(architectures, str):
        architectures = (architectures,)
    for architecture in architectures if isinstance(architectures, (list, tuple)) else ():
        if isinstance(architecture, str) and (model_type, architecture) in arch_remap:
            model_type = arch_remap[(model_type, architecture)]
            break
    else:
        model_type = remap.get(model_type, model_type)
    if not isinstance(model_type, str) or not MODEL_TYPE_RE.fullmatch(model_type):
        return None
    return model_type if (models / f"{model_type}.py").is_file() or (models / model_type).is_dir() else None


def _config(folder: Path, label: str) -> dict:
    config = read_json_file(folder / "config.json", label)
    if not isinstance(config, dict):
        raise SpecError(_("{label}: {path} deve ser um objeto JSON").format(label=label, path=folder / "config.json"))
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise SpecError(
            _("{label}: {path} não diz o model_type (o mlx-lm escolhe a arquitetura por ele)").format(
                label=label, path=folder / "config.json"
            )
        )
    if config.get("model_file") is not None:
        raise SpecError(
            _("{label}: {path} pede código do repositório do modelo (model_file); o farense não o executa").format(
                label=label, path=folder / "config.json"
            )
        )
    if _mlx_lm_models() is not None and mlx_lm_module(config) is None:
        import importlib.metadata

        raise SpecError(
            _(
                "{label}: model_type {model_type} não é suportado pelo mlx-lm instalado ({version}); "
                "atualize-o (pip install -U mlx-lm) ou use outro modelo"
            ).format(label=label, model_type=excerpt(model_type), version=importlib.metadata.version("mlx-lm"))
        )
    return config


class MissingTokenizer(SpecError):
    """A model folder complete but for its tokenizer (the doctor says how to bring one)."""


def check_model_folder(path: Path, label: str) -> dict:
    """A usable mlx-lm model folder: config.json (known model_type), model*.safetensors, a tokenizer; its config."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        raise SpecError(
            _("{label}: pasta do modelo não encontrada: {path} (ponha lá o modelo, ou corrija 'model' na spec)").format(
                label=label, path=path
            )
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise SpecError(
            _("{label}: {path} é {kind}, não a pasta de um modelo").format(
                label=label, path=path, kind=kind_of(st.st_mode) or _("um ficheiro")
            )
        )
    if m := GLOB_MAGIC_RE.search(str(path)):
        raise SpecError(
            _(
                "{label}: o caminho {path} tem '{char}': o mlx-lm procura os pesos com glob e não os encontraria; "
                "use um caminho sem *, ? nem [ (mude o nome, ou ln -s para uma ligação com outro nome)"
            ).format(label=label, path=path, char=m.group())
        )
    _special_entries(path, label)
    if not (path / "config.json").exists():
        raise SpecError(_("{label}: {path} não tem config.json").format(label=label, path=path))
    config = _config(path, label)
    _weights(path, label)
    if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model")):
        raise MissingTokenizer(
            _("{label}: {path} não tem tokenizer (tokenizer.json ou tokenizer.model)").format(label=label, path=path)
        )
    return config


def has_chat_template(folder: Path) -> bool:
    """The tokenizer has a chat template (tokenizer_config.json's chat_template, or chat_template.jinja/.json)."""
    if any((Path(folder) / name).exists() for name in CHAT_TEMPLATE_FILES):
        return True
    try:
        config = orjson.loads(read_regular(Path(folder) / "tokenizer_config.json", MAX_CONFIG_BYTES))
    except (OSError, orjson.JSONDecodeError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


def check_folder_chat_template(folder: Path, label: str, data_label: str, data_format: str) -> None:
    """`messages` and prompt/completion data need the tokenizer's chat template: mlx-lm lays both out with it, and
    fails at the first example without it."""
    if not has_chat_template(folder):
        raise SpecError(
            _(
                "{label}: {data} tem exemplos '{data_format}', que o mlx-lm formata com o chat template, mas o "
                "tokenizer de {path} não tem chat_template; use o modelo -Instruct (traz o template), junte "
                "chat_template.jinja à pasta, ou converta os dados para text"
            ).format(label=label, data=data_label, data_format=data_format, path=folder)
        )
