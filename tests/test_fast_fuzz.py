"""Property-based fuzzing of spec ingestion (Hypothesis), without a model: whatever a spec file holds — random JSON
or YAML structures, text with control characters and escape sequences, extreme numbers and dates, random bytes —
reading and validating it returns a spec or one short SpecError line, and the queue turns it into a job or a file in
jobs/failed/ with a short reason; nothing ever raises anything else."""

from __future__ import annotations

import datetime as dt
import os
import string

import orjson
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farensed.errors import SpecError
from farensed.queue.jobs import Queue
from farensed.spec.jobspec import JobSpec, parse_spec
from farensed.spec.load import read_spec_file
from farensed.storage.workspace import Workspace
from tests.hostile import OSC_CLIPBOARD, OSC_TITLE, spec

REASON_MAX = 500  # characters of one refusal beyond the file's path (an unknown key lists every valid key: ~430)
EXAMPLES = int(os.environ.get("FARENSE_FUZZ_EXAMPLES", "100"))  # a longer hunt: FARENSE_FUZZ_EXAMPLES=5000
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(max_codepoint=0x9F), max_size=40),  # C0 and C1 controls
    st.sampled_from([OSC_TITLE, OSC_CLIPBOARD, "\x1b[2J", "abc\n", "\u202eevil", "../x", "", " ", "x" * 5000]),
)
EXTREME_NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 2**31, 2**53 + 1, 10**400, 1e308, -0.0, 5e-324]),
)
DATES = st.one_of(
    st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)).map(dt.datetime.isoformat),
    st.datetimes(timezones=st.timezones()).map(dt.datetime.isoformat),
    st.sampled_from(["9999-12-31T23:59:59", "0001-01-01T00:00:00", "23:59", "24:00", "99:99", "amanhã"]),
)
SCALARS = st.one_of(st.none(), st.booleans(), EXTREME_NUMBERS, HOSTILE_TEXT, DATES)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(HOSTILE_TEXT, children, max_size=5)),
    max_leaves=30,
)
KEYS = st.sampled_from(
    sorted(JobSpec.__dataclass_fields__)
    + ["lora.rank", "lora.alpha", "lora.scale", "data.train", "early_stopping.patience"]
)


@st.composite
def mutated_specs(draw):
    """A valid spec with a few keys (top-level or nested) set to hostile values."""
    raw = spec()
    for _ in range(draw(st.integers(1, 4))):
        key = draw(KEYS)
        value = draw(st.one_of(VALUES, DATES, EXTREME_NUMBERS))
        section, _dot, leaf = key.rpartition(".")
        target = raw.setdefault(section, {}) if section else raw
        if isinstance(target, dict):
            target[leaf] = value
    return raw


def refused_in_one_line(exc: SpecError, path: str = "spec.json") -> None:
    text = str(exc)
    assert "\n" not in text and "\x1b" not in text and len(text.replace(path, "", 1)) <= REASON_MAX, text[:500]


@FUZZ
@given(raw=st.one_of(VALUES, mutated_specs()))
def test_parse_spec_returns_a_spec_or_one_short_line(raw):
    try:
        assert isinstance(parse_spec(raw, "spec.json"), JobSpec)
    except SpecError as exc:
        refused_in_one_line(exc)


def _dump_yaml(value) -> str:
    try:
        return yaml.safe_dump(value, allow_unicode=True)
    except (yaml.YAMLError, ValueError):
        return str(value)


@FUZZ
@given(
    raw=st.one_of(VALUES, mutated_specs()),
    form=st.sampled_from(["json", "yaml", "bytes"]),
    noise=st.binary(max_size=64),
)
def test_reading_any_spec_file_returns_a_spec_or_one_short_line(isolated_home, raw, form, noise):
    path = isolated_home / f"fuzz.{'yaml' if form == 'yaml' else 'json'}"
    if form == "json":
        try:
            path.write_bytes(orjson.dumps(raw))
        except TypeError:  # an integer orjson cannot write: the standard library writes any
            import json

            path.write_text(json.dumps(raw))
    elif form == "yaml":
        path.write_text(_dump_yaml(raw), encoding="utf-8", errors="surrogateescape")
    else:
        path.write_bytes(noise)
    try:
        parse_spec(read_spec_file(path), str(path))
    except SpecError as exc:
        refused_in_one_line(exc, str(path))


YAML_HAZARDS = st.sampled_from(
    [
        "a: &a [1,2]\nb: [*a, *a]\n",
        "a: &a [*a]\n",
        "? [1, 2]\n: x\n",
        "!!python/name:os.system\n",
        "model: !!timestamp 2024-01-01\n",
        "not_before: 2024-01-01 23:00:00\n",
        "<<: {name: x}\n",
        "name: !!binary AAAA\n",
        "%YAML 1.1\n---\nname: x\n",
        "- - - - - - - - - - - - - - - - - - - x\n",
        "name: x\n---\nname: y\n",
        "\t\x00\x1b]0;t\x07",
    ]
)


@FUZZ
@given(head=YAML_HAZARDS, tail=st.text(alphabet=string.printable, max_size=80))
def test_yaml_hazards_are_one_line(isolated_home, head, tail):
    path = isolated_home / "fuzz.yaml"
    path.write_text(head + tail, encoding="utf-8", errors="surrogateescape")
    try:
        parse_spec(read_spec_file(path), str(path))
    except SpecError as exc:
        refused_in_one_line(exc, str(path))


@settings(
    max_examples=max(EXAMPLES // 3, 20), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.one_of(VALUES, mutated_specs()), yaml_form=st.booleans())
def test_ingestion_makes_a_job_or_sets_the_file_aside_with_a_short_reason(isolated_home, raw, yaml_form):
    """The workspace has no model: every spec that parses fails at the model check — the daemon's path to failed/."""
    ws = Workspace(isolated_home)
    q = Queue(ws)
    name = "fuzz.yaml" if yaml_form else "fuzz.json"
    path = q.inbox / name
    try:
        path.write_text(_dump_yaml(raw) if yaml_form else orjson.dumps(raw).decode(), errors="surrogateescape")
    except TypeError:
        path.write_text(repr(raw)[:1000])
    refused = []
    job = q.ingest(path, on_reject=lambda file, reason, exc: refused.append((file, reason, exc)))
    assert job is None  # no model in this workspace
    [(file, reason, exc)] = refused
    assert file == name and isinstance(exc, SpecError), exc  # never an exception of ours: a reason
    stored = (q.failed_inbox / f"{name}.reason.txt").read_text()
    assert stored == reason + "\n" and len(reason) <= 300 and "\n" not in reason and "\x1b" not in reason
    (q.failed_inbox / name).unlink()
    (q.failed_inbox / f"{name}.reason.txt").unlink()
