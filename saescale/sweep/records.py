"""What a sweep's output folder records about its members, checked against the spec before a rerun.

A rerun of ``saescale sweep`` skips finished members and resumes started ones, so it must not
do either for a member whose recorded settings are no longer what the spec asks (e.g. more
tokens per member): :func:`check_rerun` refuses, before anything is written, with one line
naming the member, the setting, the recorded and the spec value, and the fix (restore the spec,
or use a new --out). It reads, for every member of the spec, each record that exists:

    OUT/<member>/run.json      written when the member started (settings as given and as resolved)
    OUT/<member>/result.json   written when it finished (settings as given, and the data)
    OUT/results.jsonl          its line, if any

Compared: every SAE and training setting, resolved by the same rules on both sides (so an
unset learning rate and the rule's value written out are the same setting; the data-dependent
width d is the recorded one, a mean_sq scale left to the estimate is equal to another left to
it), but the ones that cannot change the result (:data:`RUNTIME`); and the data: the source
('synthetic', 'stream', 'cache'), the [synthetic] table, and the [activations] settings that
decide the activations (:data:`NOT_THE_DATA` aside, and for a cache the harvest batch, which a
cache keeps from its first run). An empty hook is compared as the hook it resolves to for the
model (from the model's config, no weights read; not compared for a hub model, which would need
the network). For a cache given by path the spec's [activations] is not used: the cache's own
manifest is compared with what the members recorded. Older records read as today's (legacy
sentinels upgraded, a setting added since at its default; a results line without settings has
nothing to compare). Members that resume from a checkpoint are
checked once more when they open, against the exact provenance (saescale.train.run.check_same_run).

A results.jsonl line whose member the spec no longer has (its grid was edited) is refused, not
ignored: the rerun would rewrite results.jsonl without that line, and ``saescale fit`` would
silently fit another set of members. Member folders that the spec does not name are left alone
(they are not read). A record that cannot be read (not UTF-8, not JSON, a truncated line) is a
one-line error naming the file and line.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

from saescale.activations.config import ActivationConfig
from saescale.activations.manifest import MANIFEST, config_record, read_manifest
from saescale.activations.precision import recorded_model_dtype
from saescale.activations.sources import is_array_path
from saescale.configs import config_from_dict, config_to_dict, field_default, read_jsonl
from saescale.data.arrays import ArraySource
from saescale.data.synthetic import SyntheticConfig
from saescale.errors import SaescaleError
from saescale.sae.config import SAEConfig, upgrade_sae_record
from saescale.sae.registry import arch_class
from saescale.sweep.spec import Member, SweepSpec
from saescale.train.config import TrainConfig, read_as_same, upgrade_train_record

RUNTIME = ("progress", "log_every", "checkpoint_every", "keep_checkpoints", "device")
"""Training settings that may differ between a member's record and the spec: where it runs, what it logs and keeps.
The selection's precision may differ between the values that train the same SAE
(:data:`~saescale.train.config.SAME_RESULT`: 'auto' resolves by the machine, the exact bf16 selection is
float32's), not to the approximate 'autocast'."""

NOT_THE_DATA = ("cache_dir", "cache")
"""Data settings that say where the activations are, not what they are: never compared."""

ESTIMATED = "estimated from the data"
"""The resolved value of a mean_sq scale left unset (init estimates it from the same data on both sides)."""


_JSONL_FIX = "delete the file: the sweep writes it again from the members' result.json"


class Record(NamedTuple):
    """One record of a member's settings, as read from one file."""

    where: str  # 'path' or 'path:line', for messages
    sae: dict[str, Any]
    train: dict[str, Any]
    data: dict[str, Any] | None  # source provenance (source, synthetic / activations); None if not recorded
    d: int | None  # the resolved input width, if recorded


def read_json(path: Path, fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; one-line error (naming ``fix``) if it is not UTF-8 JSON of an object."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SaescaleError(f"{path} is damaged ({getattr(e, 'msg', e)}); {fix}") from None
    if not isinstance(obj, dict):
        raise SaescaleError(f"{path} is damaged (not a JSON object); {fix}")
    return obj


def _settings_record(where: str, obj: Any) -> Record | None:
    """A :class:`Record` from a result.json object or a results.jsonl line (``settings`` + ``d``); None for
    an older one that recorded no settings (nothing to compare)."""
    settings = obj.get("settings") if isinstance(obj, dict) else None
    if not isinstance(settings, dict) or not isinstance(settings.get("sae"), dict) or not isinstance(settings.get("train"), dict):
        return None
    data = settings.get("data") if isinstance(settings.get("data"), dict) else None
    d = obj.get("d") if isinstance(obj.get("d"), int) else None
    return Record(where, settings["sae"], settings["train"], data, d)


def _run_record(path: Path, fix: str) -> Record:
    """A :class:`Record` from a member's run.json (its ``extra`` is the data provenance)."""
    obj = read_json(path, fix)
    if not all(isinstance(obj.get(k), dict) for k in ("sae", "train", "extra")):
        raise SaescaleError(f"{path} is damaged (no sae, train or extra settings); {fix}")
    resolved = obj.get("resolved") if isinstance(obj.get("resolved"), dict) else {}
    d = (resolved.get("sae") or {}).get("d") if isinstance(resolved.get("sae"), dict) else None
    return Record(str(path), obj["sae"], obj["train"], obj["extra"], d)


def member_records(out: Path, m: Member, line: Record | None) -> Iterator[Record]:
    """Every record of member ``m`` in the sweep folder ``out``: run.json, result.json, its results.jsonl line."""
    folder = out / m.id
    fix = f"delete {folder} to train the member again, or use a new --out"
    if (folder / "run.json").is_file():
        yield _run_record(folder / "run.json", fix)
    if (folder / "result.json").is_file():
        rec = _settings_record(str(folder / "result.json"), read_json(folder / "result.json", fix))
        if rec is not None:
            yield rec
    if line is not None:
        yield line


def results_lines(spec: SweepSpec) -> dict[str, Record]:
    """Member id -> the record of its OUT/results.jsonl line; a line of a member the spec lacks is refused."""
    path = spec.out / "results.jsonl"
    if not path.is_file():
        return {}
    ids, lines = {m.id for m in spec.members}, {}
    for i, obj in read_jsonl(path, _JSONL_FIX):
        where = f"{path}:{i}"
        mid = obj.get("id") if isinstance(obj, dict) else None
        if not isinstance(mid, str):
            raise SaescaleError(f"{where}: not a member's result (no 'id'); {_JSONL_FIX}")
        if mid not in ids:
            raise SaescaleError(f"{where}: member {mid} is not in the spec {spec.path} (was its [grid] edited?); "
                                "restore the spec, or use a new --out for the new grid")
        rec = _settings_record(where, obj)
        if rec is not None:
            lines[mid] = rec
    return lines


def with_defaults(cls: type, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with every field of dataclass ``cls`` that it lacks at the field's default."""
    defaults = {f.name: field_default(f) for f in dataclasses.fields(cls)}
    return {**{k: v for k, v in defaults.items() if v is not dataclasses.MISSING}, **record}


def resolved_settings(sae: dict[str, Any], train: dict[str, Any], d: int | None) -> dict[str, Any]:
    """{'sae.<field>': value, 'train.<field>': value} with unset settings resolved by the training rules
    (width ``d`` from the record); an older record reads as today's (upgraded, a setting it lacks at its
    default), and one that no longer parses is taken as recorded."""
    sae, train = with_defaults(SAEConfig, upgrade_sae_record(sae)), with_defaults(TrainConfig, upgrade_train_record(train))
    if sae.get("d") is None and d is not None:
        sae["d"] = d
    if sae.get("normalize") == "mean_sq" and sae.get("norm_scale") is None:
        sae["norm_scale"] = ESTIMATED
    if isinstance(sae.get("n"), int) and isinstance(sae.get("d"), int):
        try:
            cls = arch_class(sae["arch"]) if isinstance(sae.get("arch"), str) else None
            train = config_to_dict(config_from_dict(TrainConfig, train).resolved(
                sae["n"], sae["d"], cls.lr_rule if cls else "topk", cls.selection_precisions if cls else None))
        except SaescaleError:
            pass
    flat = {f"sae.{k}": v for k, v in sae.items()}
    flat.update({f"train.{k}": v for k, v in train.items() if k not in RUNTIME})
    return flat


def spec_data(spec: SweepSpec) -> dict[str, Any]:
    """The data record the spec asks for, in the form a member records it (see :func:`data_settings`)."""
    source = spec.settings.source
    if source == "synthetic":
        return {"source": "synthetic", "synthetic": config_to_dict(spec.synthetic)}
    if source == "stream":
        return {"source": "stream", "activations": config_record(spec.activations)}
    if source == "cache":
        return {"source": "cache", "activations": config_record(spec.activations)}
    if is_array_path(source):  # your own activation files: what they are now (files, shapes, dtypes, split)
        return ArraySource(source, seed=spec.train.seed).provenance()
    path = Path(source)  # an existing cache: what its manifest says (nothing to compare if it cannot be read)
    try:
        manifest = read_manifest(path) if (path / MANIFEST).is_file() else None
    except SaescaleError:
        manifest = None
    if manifest is None:
        return {"source": "cache"}
    config = manifest.get("config", {})
    return {"source": "cache", "activations": {**config, "hook": manifest.get("hook"),
                                               "model_dtype": recorded_model_dtype(config)}}


def data_settings(data: dict[str, Any] | None) -> dict[str, Any]:
    """{'data.source': ..., 'data.synthetic.<field>': ..., 'data.activations.<field>': ...} of a data
    record (older records read as today's: synth_ prefixes, no offset, a setting they lack at its default,
    float32 model), the :data:`NOT_THE_DATA` keys dropped."""
    data = data or {}
    flat: dict[str, Any] = {"data.source": data.get("source")}
    synth = data.get("synthetic")
    if isinstance(synth, dict):
        synth = with_defaults(SyntheticConfig, {"offset": 0.0, **{k.removeprefix("synth_"): v for k, v in synth.items()}})
        flat.update({f"data.synthetic.{k}": v for k, v in synth.items()})
    arrays = data.get("arrays")
    if isinstance(arrays, dict):  # the files as a whole (paths, shapes, dtypes), the row counts and the split
        flat.update({f"data.arrays.{k}": v for k, v in arrays.items()})
    acts = data.get("activations")
    if isinstance(acts, dict):
        acts = {**with_defaults(ActivationConfig, acts), "model_dtype": recorded_model_dtype(acts)}
        flat.update({f"data.activations.{k}": v for k, v in acts.items() if k not in NOT_THE_DATA})
    return flat


HOOK, MODEL, HARVEST_BATCH = "data.activations.hook", "data.activations.model", "data.activations.harvest_batch"

UNRESOLVED = object()
"""A default hook whose model could not be looked up here (a hub id, an unreadable folder): not compared."""


@functools.cache
def default_hook_of(model: str) -> str | None:
    """The hook an empty --hook resolves to for ``model`` (:func:`saescale.activations.hooks.default_hook`
    of the model built from its config on the meta device: no weights read); None if it cannot be told here."""
    from saescale.activations.hooks import default_hook
    from saescale.activations.lm import resolve_model_folder

    try:
        from transformers import AutoConfig, AutoModelForCausalLM

        folder = resolve_model_folder(model)
        if not isinstance(folder, Path):  # a hub id: no network lookups for a check
            return None
        with torch.device("meta"):
            return default_hook(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)))
    except Exception:  # noqa: BLE001 - any failure only means that the hook is not compared
        return None


def _resolve_hooks(flat: dict[str, Any]) -> None:
    """An empty (default) hook of ``flat`` replaced by the hook it resolves to for the record's model."""
    if flat.get(HOOK) == "":
        hook = default_hook_of(str(flat.get(MODEL, "default")))
        flat[HOOK] = UNRESOLVED if hook is None else hook


def differences(m: Member, spec: SweepSpec, data: dict[str, Any], rec: Record) -> list[tuple[str, Any, Any]]:
    """(setting, recorded value, spec value) for every setting that differs between ``rec`` and the spec."""
    recorded = resolved_settings(rec.sae, rec.train, rec.d)
    asked = resolved_settings(config_to_dict(m.sae), config_to_dict(m.train), rec.d)
    if rec.data is not None:
        recorded.update(data_settings(rec.data))
        asked.update(data_settings(data))
        if spec.settings.source not in ("synthetic", "stream"):  # a cache keeps the harvest batch it was started with
            recorded.pop(HARVEST_BATCH, None), asked.pop(HARVEST_BATCH, None)
        if recorded.get(HOOK) != asked.get(HOOK):
            _resolve_hooks(recorded), _resolve_hooks(asked)
    read_as_same(recorded), read_as_same(asked)
    keys = list(asked) + [k for k in recorded if k not in asked]
    unset = "(not set)"
    return [(k, recorded.get(k, unset), asked.get(k, unset)) for k in keys
            if UNRESOLVED not in (recorded.get(k), asked.get(k)) and recorded.get(k, unset) != asked.get(k, unset)]


def _refusal(spec: SweepSpec, m: Member, rec: Record, diff: list[tuple[str, Any, Any]]) -> SaescaleError:
    key, old, new = diff[0]
    more = f" (and {len(diff) - 1} more: {', '.join(k for k, _, _ in diff[1:4])}{', ...' if len(diff) > 4 else ''})" \
        if len(diff) > 1 else ""
    return SaescaleError(
        f"{rec.where}: member {m.id} was trained with {key} = {old!r} but the spec {spec.path} asks for {new!r}{more}; "
        f"restore that setting in the spec to resume the sweep, or use a new --out to train the new settings")


def check_rerun(spec: SweepSpec) -> None:
    """Refuse (one line, nothing written) when the sweep folder records a member with other settings
    than the spec asks, or a results.jsonl line of a member the spec lacks; see the module docstring."""
    if not spec.out.is_dir():
        return
    lines = results_lines(spec)
    data = spec_data(spec)
    for m in spec.members:
        for rec in member_records(spec.out, m, lines.get(m.id)):
            diff = differences(m, spec, data, rec)
            if diff:
                raise _refusal(spec, m, rec, diff)
