"""Plan-time checks of teacher entries that need the file system: a local model folder that does not exist and an
unknown `bundled:` name are spec mistakes, reported at `datagen validate` (not as a crash when the run starts)."""

from __future__ import annotations


def check_teachers(loaded) -> None:
    from datagen.bundled import model_identity

    for name, teacher in loaded.spec.teachers.items():
        if teacher.backend == "openai":
            continue  # a served model name, not a file
        try:
            model_identity(teacher.model, loaded.dir)
        except ValueError as exc:
            hint = "" if "bundled" in str(exc) else "; give an existing model folder, a hub id or a bundled: model"
            raise loaded.error(("teachers", name, "model"), f"{exc}{hint}") from None
