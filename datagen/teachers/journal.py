"""What a batch-mode teacher must make durable before it waits: which provider batches it created and which
requests each holds. The run loop hands the teacher a journal (implemented over the store, datagen/store/batches.py);
the teacher itself never touches the store.

Order matters for "never pay twice": the input file is recorded (`submitting`) before the batch is created, and the
batch id (`submitted`) right after, so a run killed at any point finds its batches again, and a request counts as
out in a batch until a reply for it is recorded or the teacher puts it back (`requeue`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass
class BatchRecord:
    input_file_id: str
    batch_id: str | None  # None: the run stopped between uploading the file and creating the batch
    status: str
    keys: list[str]  # the requests still out in this batch


class BatchJournal(Protocol):
    def open_batches(self) -> list[BatchRecord]:
        """This teacher's batches that still hold requests without a recorded reply."""

    def submitting(self, input_file_id: str, keys: list[str]) -> None:
        """The file with these requests is uploaded; the batch is about to be created."""

    def submitted(self, input_file_id: str, batch_id: str, status: str) -> None: ...

    def update(self, input_file_id: str, status: str, completed: int | None, failed: int | None,
               error: str | None = None) -> None:
        """The provider's latest status and request counts."""

    def requeue(self, input_file_id: str, keys: list[str], reason: str) -> None:
        """These requests of the batch will not get a reply from it (expired, failed, cancelled): they are pending
        again, with the reason."""

    def forget(self, input_file_id: str) -> None:
        """A submission that never became a batch: its requests are free to send again."""

    def note(self, line: str) -> None:
        """A progress line for the user (status, counts, elapsed)."""
