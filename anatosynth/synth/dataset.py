"""The synthetic stream as torch datasets, for ``torch.utils.data.DataLoader`` and MONAI transforms.

Why here, in ``synth`` (and not a package of its own): the datasets are the stream's torch face and
need nothing above it; ``synth bench`` uses them too, so a package above ``synth`` would make a cycle.

Sample ``i`` of seed ``s`` depends only on ``(s, i)`` (:mod:`anatosynth.synth.generator`), so every form
below gives the same bytes as ``SyntheticStream(bank, config, s).batch([i])``, whatever the batch, the
number of workers or the process:

- :class:`SyntheticDataset` (map-style): item ``i`` is a MONAI-style dict ``{"image": [1, X, Y, Z] float32,
  "label": [1, X, Y, Z] int64, "index": i}`` (plus ``"log"``, the placement log, with ``log=True``),
  rendered on ``device`` in the process that fetches it (a DataLoader worker). Dict transforms such as
  ``monai.transforms.RandFlipd`` apply to it as to a loaded scan.
- :class:`SyntheticIterableDataset`: the same items, indices ``start, start+1, ...`` (endless without
  ``stop``), sharded by synthetic body across DataLoader workers and DDP ranks with no overlap.
- :class:`SyntheticParamsDataset`: item ``i`` is the sample's :class:`~anatosynth.synth.generator.SampleParams`
  (all its randomness, picklable: the CPU work of placement, done in workers); :class:`RenderBatch` turns a
  list of them into one batch on the training device with one batched ``apply`` (the GPU path).

The bank is a path (``"builtin:phantom"``, a bank file; loaded once, here) or a loaded
:class:`~anatosynth.bank.model.ShapeBank`; spawned workers receive it pickled (a few MB, faster than loading
again). The stream itself is rebuilt in each worker, never pickled.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from anatosynth.bank.model import ShapeBank
from anatosynth.errors import ConfigError
from anatosynth.options import parse_patch, resolve_device
from anatosynth.synth.config import SynthConfig
from anatosynth.synth.generator import SampleParams, SynthBatch, SyntheticStream

__all__ = ["SyntheticDataset", "SyntheticIterableDataset", "SyntheticParamsDataset", "RenderBatch",
           "params_loader", "BodyTasks", "BodyTaskLoader", "shard_bodies", "dist_rank_world", "WORKER_TIMEOUT_S"]

WORKER_TIMEOUT_S = 600.0  # a batch's draw that takes longer than this is treated as a hung worker

BankArg = ShapeBank | str | Path | None


def _synth_config(config: SynthConfig | dict | None, patch) -> SynthConfig:
    """``config`` (a SynthConfig, a dict of its fields or None for the defaults), with ``patch`` if given."""
    if config is None:
        config = SynthConfig()
    elif isinstance(config, dict):
        config = SynthConfig.from_dict(config)
    elif not isinstance(config, SynthConfig):
        raise ConfigError(f"config must be a SynthConfig or a dict of its fields, got {type(config).__name__}")
    if patch is None:
        return config.validate()
    d = config.to_dict()
    d["patch"] = list(parse_patch(patch, minimum=32, multiple=32))
    return SynthConfig.from_dict(d)


class _StreamData:
    """What every form shares: the stream's recipe (bank, config, seed) and a per-process stream."""

    def __init__(self, bank: BankArg, config: SynthConfig | dict | None = None, seed: int = 0, patch=None,
                 device: str | torch.device = "cpu", log: bool = False):
        self.config = _synth_config(config, patch)
        self.seed = seed
        self.device = resolve_device(device)
        self.log = bool(log)
        if isinstance(bank, (str, Path)):
            from anatosynth.bank import load_bank

            bank = None if self.config.mode == "primitives" else load_bank(bank)
        elif bank is not None and not isinstance(bank, ShapeBank):
            raise ConfigError("bank must be a path, 'builtin:phantom' or a loaded ShapeBank, "
                              f"got {type(bank).__name__}")
        self.bank = bank
        self._stream: SyntheticStream | None = SyntheticStream(bank, self.config, seed)  # checks it all now

    @classmethod
    def from_stream(cls, stream: SyntheticStream, **kw):
        """A dataset over an existing stream (reused in this process; workers rebuild it from its recipe)."""
        ds = cls(stream.bank, stream.config, stream.seed, **kw)
        ds._stream = stream
        return ds

    @property
    def stream(self) -> SyntheticStream:
        """This process's stream (rebuilt on first use in a DataLoader worker, after unpickling)."""
        if self._stream is None:
            self._stream = SyntheticStream(self.bank, self.config, self.seed)
        return self._stream

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_stream"] = None  # caches and device tensors stay behind; the recipe (bank, config, seed) travels
        return state

    @property
    def class_names(self) -> list[str]:
        """``background`` then the bank's organs (or the primitive classes): label ``k`` is ``class_names[k]``."""
        return list(self.stream.class_names)

    def _items(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Rendered samples ``indices`` as dicts (one ``apply`` for all of them)."""
        stream = self.stream
        out = stream.apply([stream.draw(int(i)) for i in indices], self.device)
        logs = out.logs if self.log else None
        items = []
        for k, i in enumerate(indices):
            item: dict[str, Any] = {"image": out.image[k], "label": out.label[k].unsqueeze(0), "index": int(i)}
            if logs is not None:
                item["log"] = logs[k]
            items.append(item)
        return items


def _check_length(length) -> int:
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ConfigError(f"length must be a positive number of samples, got {length!r}")
    return length


def _check_index(index, length: int | None) -> int:
    if isinstance(index, bool) or not isinstance(index, int) and not hasattr(index, "__index__"):
        raise TypeError(f"sample index must be an integer, got {type(index).__name__}")
    i = int(index)
    if i < 0 or (length is not None and i >= length):
        raise IndexError(f"sample index {i} outside 0..{length - 1 if length is not None else 'inf'}")
    return i


class SyntheticDataset(_StreamData, Dataset):
    """Map-style: item ``i`` is sample ``i`` of the stream as ``{"image", "label", "index"}`` (see module).

    Args:
        bank: bank path, ``"builtin:phantom"`` or a loaded ShapeBank (None in ``primitives`` mode).
        config: :class:`~anatosynth.synth.config.SynthConfig` (or a dict of its fields); default the method's.
        seed: stream seed.
        patch: patch size (N or (X, Y, Z), multiples of 32); overrides ``config.patch``.
        device: where items are rendered (``cpu`` in DataLoader workers).
        length: samples in an epoch, ``0..length-1`` (the stream itself is endless).
        log: add each sample's placement log as ``"log"``.

    Example::

        ds = SyntheticDataset("builtin:phantom", SynthConfig(render="fill"), seed=0, patch=64, length=100)
        item = ds[3]   # item["image"]: [1, 64, 64, 64] float32, item["label"]: [1, 64, 64, 64] int64
    """

    def __init__(self, bank: BankArg, config: SynthConfig | dict | None = None, seed: int = 0, patch=None,
                 device: str | torch.device = "cpu", length: int = 1000, log: bool = False):
        super().__init__(bank, config, seed, patch, device, log)
        self.length: int = _check_length(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._items([_check_index(index, self.length)])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """A DataLoader batch in one ``apply`` (the same bytes as one by one)."""
        return self._items([_check_index(i, self.length) for i in indices])


def dist_rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: the ones given, else torch.distributed's when initialised, else ``(0, 1)``."""
    if rank is None or world_size is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
    rank, world_size = int(rank or 0), int(world_size or 1)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} of world size {world_size}: need 0 <= rank < world size")
    return rank, world_size


def shard_bodies(start: int, stop: int | None, patches_per_body: int, shard: int, shards: int) -> Iterator[int]:
    """Indices in ``[start, stop)`` (endless without ``stop``) of shard ``shard`` of ``shards``.

    A shard takes whole synthetic bodies (``index // patches_per_body``), every ``shards``-th one, so the
    shards are disjoint, their union is the range, and no body is laid out by two shards.
    """
    body = start // patches_per_body
    while True:
        if body % shards == shard:
            lo = max(start, body * patches_per_body)
            hi = (body + 1) * patches_per_body if stop is None else min(stop, (body + 1) * patches_per_body)
            yield from range(lo, hi)
        body += 1
        if stop is not None and body * patches_per_body >= stop:
            return


class SyntheticIterableDataset(_StreamData, IterableDataset):
    """Iterable: samples ``start, start+1, ...`` (endless unless ``stop``), split over workers and ranks.

    Each (DDP rank, DataLoader worker) pair reads its own shard (:func:`shard_bodies`): rank and world size
    are the arguments given, else ``torch.distributed``'s when initialised; worker ids come from
    :func:`torch.utils.data.get_worker_info`. Items are those of :class:`SyntheticDataset`.

    Args:
        start, stop: the sample indices to yield, ``start`` up to ``stop`` (exclusive; None: endless).
        rank, world_size: this process's DDP rank and the number of ranks (default: ``torch.distributed``'s).

    Shards are whole synthetic bodies (``patches_per_body`` consecutive samples each, so no body is laid out
    twice), dealt out in turn. With a finite ``stop`` the shards can therefore differ in length by up to a
    body's worth of samples per shard, and a shard can be empty (``stop=3``, two ranks: rank 1 gets none):
    a DDP loop that needs the same number of steps on every rank should use an endless stream
    (``stop=None``) and count steps itself.

    Example::

        ds = SyntheticIterableDataset("bank.npz", seed=0, patch=96, stop=10_000)
        loader = DataLoader(ds, batch_size=4, num_workers=4)   # each sample once, in all ranks together
    """

    def __init__(self, bank: BankArg, config: SynthConfig | dict | None = None, seed: int = 0, patch=None,
                 device: str | torch.device = "cpu", start: int = 0, stop: int | None = None,
                 rank: int | None = None, world_size: int | None = None, log: bool = False):
        super().__init__(bank, config, seed, patch, device, log)
        if start < 0 or (stop is not None and stop < start):
            raise ConfigError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
        self.start, self.stop = int(start), stop
        self.rank, self.world_size = rank, world_size

    def shard(self) -> tuple[int, int]:
        """``(shard, shards)`` of this process: rank-major over (rank, worker)."""
        rank, world = dist_rank_world(self.rank, self.world_size)
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * workers + worker, world * workers

    def indices(self) -> Iterator[int]:
        """The sample indices this process yields."""
        shard, shards = self.shard()
        return shard_bodies(self.start, self.stop, self.config.patches_per_body, shard, shards)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in self.indices():
            yield self._items([i])[0]


class SyntheticParamsDataset(_StreamData, Dataset):
    """Item ``i`` is the :class:`SampleParams` of sample ``i`` (all its randomness; picklable, CPU only).

    Draw in DataLoader workers, render the batch where it trains with :class:`RenderBatch` (one batched
    ``apply``): as the collate function without workers, or in the training loop on a list of params::

        ds = SyntheticParamsDataset("builtin:phantom", seed=0, patch=96, length=4000)
        render = ds.renderer("cuda")
        loader = DataLoader(ds, batch_size=4, num_workers=4, collate_fn=list)
        for params in loader:
            batch = render(params)       # {"image": [4, 1, 96, 96, 96] on cuda, "label": ..., "index": ...}
    """

    def __init__(self, bank: BankArg, config: SynthConfig | dict | None = None, seed: int = 0, patch=None,
                 length: int | None = None):
        super().__init__(bank, config, seed, patch, "cpu")
        self.length = None if length is None else _check_length(length)

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("an endless SyntheticParamsDataset has no length (give length=, or a batch_sampler)")
        return self.length

    def __getitem__(self, index: int) -> SampleParams:
        return self.stream.draw(_check_index(index, self.length))

    def __getitems__(self, indices: Sequence[int]) -> list[SampleParams]:
        return [self.stream.draw(_check_index(i, self.length)) for i in indices]

    def renderer(self, device: str | torch.device = "cpu", log: bool = False) -> RenderBatch:
        """The collate function that renders a list of this dataset's params on ``device``."""
        return RenderBatch(self, device, log)


class RenderBatch:
    """Collate: a list of :class:`SampleParams` → one batch dict rendered on ``device`` in one ``apply``.

    ``{"image": [B, 1, X, Y, Z] float32, "label": [B, 1, X, Y, Z] int64, "index": [B] int64}`` (plus
    ``"log"``, a list, with ``log=True``); :attr:`last` keeps the :class:`SynthBatch` for its logs.
    """

    def __init__(self, data: SyntheticParamsDataset, device: str | torch.device = "cpu", log: bool = False):
        self.data = data
        self.device = resolve_device(device)
        self.log = bool(log)

    def synth_batch(self, params: Sequence[SampleParams]) -> SynthBatch:
        """The stream's own batch of ``params`` (label without a channel, lazily built logs)."""
        return self.data.stream.apply(list(params), self.device)

    def __call__(self, params: Sequence[SampleParams]) -> dict[str, Any]:
        out = self.synth_batch(params)
        batch: dict[str, Any] = {"image": out.image, "label": out.label.unsqueeze(1),
                                 "index": torch.tensor([p.index for p in params], dtype=torch.int64)}
        if self.log:
            batch["log"] = out.logs
        return batch


class BodyTasks(Sampler[list[int]]):
    """Worker tasks of one synthetic body each, cut from a batch sampler's indices (taken in order).

    A body (``index // patches_per_body``) is laid out once per process and cached, so when the samples
    of one body sit in different batches, batch-sized tasks would make several workers lay it out again
    (about 180 ms each for FLARE22's 13 organs). Here a task is a maximal run of consecutive indices of
    the same body, across batch boundaries; :class:`BodyTaskLoader` cuts the runs back into the batches.
    """

    def __init__(self, batch_sampler: Iterable[Sequence[int]], patches_per_body: int):
        self.batch_sampler = batch_sampler
        self.patches_per_body = int(patches_per_body)

    def __iter__(self) -> Iterator[list[int]]:
        run: list[int] = []
        for batch in self.batch_sampler:
            for i in batch:
                if run and int(i) // self.patches_per_body != run[-1] // self.patches_per_body:
                    yield run
                    run = []
                run.append(int(i))
        if run:
            yield run


class BodyTaskLoader:
    """Lists of :class:`SampleParams`, one per batch of ``batch_sampler``, drawn by workers body by body.

    Iterating starts a DataLoader over :class:`BodyTasks` (one task per body) and regroups the drawn runs
    into the batches asked for; dropping the iterator stops the workers.
    """

    def __init__(self, data: SyntheticParamsDataset, batch_sampler: Iterable[Sequence[int]], workers: int,
                 timeout: float):
        self.data, self.batch_sampler = data, batch_sampler
        tasks_per_batch = max(1, -(-_batch_size(batch_sampler) // data.config.patches_per_body))
        self.loader = DataLoader(data, batch_sampler=BodyTasks(batch_sampler, data.config.patches_per_body),
                                 collate_fn=list, num_workers=int(workers), multiprocessing_context="spawn",
                                 prefetch_factor=2 * tasks_per_batch, timeout=timeout,
                                 worker_init_fn=_single_thread)

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[SampleParams]]:
        tasks = iter(self.loader)
        ready: list[SampleParams] = []
        for batch in self.batch_sampler:
            while len(ready) < len(batch):
                ready.extend(next(tasks))
            yield ready[:len(batch)]
            ready = ready[len(batch):]


def _batch_size(batch_sampler) -> int:
    """Samples per batch of a batch sampler (its ``batch`` or ``batch_size``, else its first batch's)."""
    for name in ("batch", "batch_size"):
        if isinstance(getattr(batch_sampler, name, None), int):
            return int(getattr(batch_sampler, name))
    return max(1, len(next(iter(batch_sampler), [0])))


def params_loader(data: SyntheticParamsDataset, batch_sampler: Iterable[list[int]], workers: int = 0,
                  timeout: float = WORKER_TIMEOUT_S) -> Iterable[list[SampleParams]]:
    """Lists of :class:`SampleParams`, one list per batch of ``batch_sampler`` (a re-iterable sampler).

    ``workers`` spawned processes (safe with CUDA; one torch thread each, since they only run numpy
    placement) draw about two batches each ahead, one task per synthetic body (:class:`BodyTasks`, so no
    body is laid out by two workers); with 0 a plain DataLoader draws in the calling process when asked.
    A worker that dies, or stays silent past ``timeout`` seconds, is DataLoader's RuntimeError, not a hang.
    Render each list with :meth:`SyntheticParamsDataset.renderer` (or the stream's ``apply``) where the
    model trains.
    """
    if workers <= 0:
        return DataLoader(data, batch_sampler=batch_sampler, collate_fn=list)
    return BodyTaskLoader(data, batch_sampler, workers, timeout)


def _single_thread(_: int) -> None:
    torch.set_num_threads(1)
