"""Embeddings on a Ray cluster: under `datagen run SPEC --ray ADDRESS`, the texts a curation stage needs vectors for
and the store does not have are encoded by Ray actors in batches (Ray Data's `map_batches`), one model load per
actor, and come back to the driver, which stores them as they arrive (datagen/embed/encode.py). The index and the
selection stay on the driver.

Actors: one per GPU on a GPU cluster (each with `num_gpus=1`), else one per two CPUs of the cluster (torch runs
each actor's batch on its CPUs' threads).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import numpy as np


def on_ray() -> bool:
    """Whether this process is connected to a Ray cluster (`datagen run --ray`); never imports Ray itself."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


class Encoder:
    """A Ray Data actor: one embedding model (what `encode` loads once per process), batches of {k, text} in,
    {k, vector} out."""

    def __init__(self, encode: Callable, ref: str, spec_dir: str | None, backend: str):
        self.encode, self.ref, self.spec_dir, self.backend = encode, ref, spec_dir, backend

    def __call__(self, batch: dict) -> dict:
        vectors = self.encode([str(t) for t in batch["text"]], self.ref, self.spec_dir, backend=self.backend)
        return {"k": batch["k"], "vector": vectors}


def placement() -> tuple[int, dict]:
    """How many encoder actors, and the resources of each."""
    import ray

    resources = ray.cluster_resources()
    if resources.get("GPU", 0) >= 1:
        return int(resources["GPU"]), {"num_gpus": 1}
    cpus = max(1, int(resources.get("CPU", 1)))
    return max(1, cpus // 2), {"num_cpus": min(2, cpus)}


def encode_batches(encode: Callable, texts: list[str], ref: str, spec_dir, backend: str, batch_size: int
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions in `texts`, their vectors by `encode` (datagen.embed.encode.encode) in the actors), batch by batch as
    the actors finish them, in no particular order."""
    import ray.data

    actors, resources = placement()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the run's log says how far embedding is
    ds = ray.data.from_items([{"k": k, "text": t} for k, t in enumerate(texts)],
                             override_num_blocks=max(1, -(-len(texts) // batch_size)))
    args = (encode, ref, None if spec_dir is None else str(spec_dir), backend)
    ds = ds.map_batches(Encoder, fn_constructor_args=args, batch_size=batch_size, batch_format="numpy",
                        concurrency=actors, **resources)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        yield np.asarray(batch["k"], dtype=np.int64), np.asarray(batch["vector"], dtype=np.float32)
