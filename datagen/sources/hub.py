"""`dataset:` sources: anything `datasets.load_dataset` reads (a Hub id, a local Hub-layout folder with
`data/train-*.parquet`), or a folder written by `save_to_disk`.

Loading goes through `datasets` itself, so the user's Hugging Face cache, `HF_HUB_OFFLINE`, `HF_TOKEN` (or a
`huggingface-cli login`) and `HF_HOME` work as they do everywhere else. What identifies the loaded data (id, config,
split, revision and the dataset's fingerprint, which changes when its files do) is kept for the plan and the card.
Each row's `_id` is still a hash of its content, so a changed row is regenerated and an unchanged one is not.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from datagen.errors import UserError

DEFAULT_SPLIT = "train"


def load_dataset_rows(source, base_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows, identity) of a `dataset:` source, with `columns` and `limit` applied."""
    with _quiet():
        ds, identity = _load(source, base_dir)
        if source.columns is not None:
            missing = [c for c in source.columns if c not in ds.column_names]
            if missing:
                raise UserError(f"columns {', '.join(missing)} are not in the dataset; its columns: "
                                f"{', '.join(ds.column_names)}")
            ds = ds.select_columns(source.columns)
        if source.limit is not None and source.limit < len(ds):
            ds = ds.select(range(source.limit))
        rows = ds.to_list()
    identity["rows"] = len(rows)
    return rows, identity


def _load(source, base_dir: Path):
    import datasets

    local = _local_folder(source.dataset, base_dir)
    if local is not None and _saved_to_disk(local):
        if source.config is not None or source.revision is not None:
            raise UserError(f"{local} was written by `save_to_disk`: it has no configs or revisions; remove "
                            "`config`/`revision`")
        ds = _pick_split(datasets.load_from_disk(str(local)), source.split)
    else:
        target = str(local) if local is not None else source.dataset
        try:
            ds = datasets.load_dataset(target, name=source.config, split=source.split or DEFAULT_SPLIT,
                                       revision=source.revision)
        except Exception as exc:  # datasets raises many types (ValueError, FileNotFoundError, hub errors)
            raise UserError(_explain(exc, source, local)) from None
    identity = {"dataset": local.name if local is not None else source.dataset,
                "config": source.config or getattr(ds.info, "config_name", None),
                "split": str(ds.split) if ds.split is not None else (source.split or DEFAULT_SPLIT),
                "revision": source.revision, "fingerprint": ds._fingerprint}
    return ds, identity


def _local_folder(ref: str, base_dir: Path) -> Path | None:
    path = Path(ref).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if path.is_dir():
        return path.resolve()
    if ref.startswith(("/", "./", "../", "~")) or path.is_file():
        raise UserError(f"dataset folder {path} does not exist (or is a file); give a folder (a Hub-layout folder "
                        "with data/*.parquet, or one written by save_to_disk) or a Hub id such as openai/gsm8k")
    return None


def _saved_to_disk(folder: Path) -> bool:
    return (folder / "dataset_dict.json").exists() or (folder / "state.json").exists()


def _pick_split(ds, split: str | None):
    import datasets

    if not isinstance(ds, datasets.DatasetDict):
        return ds
    want = split or (DEFAULT_SPLIT if DEFAULT_SPLIT in ds else None)
    if want is None and len(ds) == 1:
        want = next(iter(ds))
    if want not in ds:
        raise UserError(f"split `{want or DEFAULT_SPLIT}` is not in the dataset; its splits: {', '.join(ds)}; "
                        "set `split:` to one of them")
    return ds[want]


def _explain(exc: Exception, source, local: Path | None) -> str:
    """One message with the fix, for the ways loading a dataset fails."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    name = type(exc).__name__
    if "split" in text.lower() and ("unknown" in text.lower() or "not found" in text.lower()):
        return f"{text}; set `split:` to one of the dataset's splits"
    if "config" in text.lower() and ("missing" in text.lower() or "not found" in text.lower()):
        return f"{text}; set `config:` to one of them"
    if local is not None:
        return f"cannot load {local} as a dataset ({name}: {text}); a Hub-layout folder holds data files such as " \
               "data/train-00000-of-00001.parquet (or .jsonl, .csv)"
    return (f"dataset `{source.dataset}` could not be loaded ({name}: {text}); check the id (and `revision`), "
            "log in for a private or gated dataset (HF_TOKEN), and unset HF_HUB_OFFLINE if it is not in your "
            "Hugging Face cache yet")


@contextlib.contextmanager
def _quiet():
    """`datasets` prints progress bars and notes ("Generating train split") on every load; a plan does not."""
    import datasets
    from datasets.utils import logging as ds_logging

    bars = not datasets.are_progress_bars_disabled()
    level = ds_logging.get_verbosity()
    datasets.disable_progress_bars()
    ds_logging.set_verbosity_error()
    import logging

    hub = logging.getLogger("huggingface_hub")
    hub_level = hub.level
    hub.setLevel(logging.ERROR)  # "Repo card metadata block was not found" for a folder without a card header
    try:
        yield
    finally:
        hub.setLevel(hub_level)
        ds_logging.set_verbosity(level)
        if bars:
            datasets.enable_progress_bars()
