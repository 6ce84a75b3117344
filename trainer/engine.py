"""The SpCL training loop: domain-adaptive (UDA), unsupervised (USL) or source-only.

One run = memory initialisation by a feature pass, then per epoch: pseudo-labels from the
memory's target rows (k-reciprocal Jaccard distance + self-paced DBSCAN, the independence
threshold and the radius fixed at the first epoch), `iters` iterations of the unified
contrastive loss against the hybrid memory, an optional evaluation (for information: the
result is always the last epoch, model selection never sees target labels), and a checkpoint.
The `recommended` recipe's additions hook in at three places, each behind its own option: the
clustering (rows re-embedded every `refresh_every` epochs, camera means removed, the radius
chosen from the data), the target sampler (image anchors) and the target loss (the
inter-camera proxy term); see trainer/config.py.

Modes: UDA = source + target through a domain-specific-BN encoder, batches [source | target],
loss = loss_source + loss_target; USL = target only; source-only = supervised training against
the source class memory (the direct-transfer baseline).

Everything random derives from the seed: model initialisation from torch's generator, batches
and augmentations from (seed, epoch) in the sampler. A checkpoint written at any iteration
therefore resumes into exactly the run that was interrupted.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from trainer.auto_eps import choose_eps
from trainer.camera import CameraProxyLoss, camera_centred, camera_ids
from trainer.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from trainer.cluster import jaccard_distance, self_paced_labels
from trainer.config import TrainConfig
from trainer.data.readers import Item
from trainer.data.sampler import IdentityBatchSampler
from trainer.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
from trainer.events import (
    Callback,
    CheckpointSaved,
    EpochEnd,
    EpochStart,
    EpsChosen,
    Evaluation,
    Iteration,
    Phase,
    RunEnd,
    RunStart,
    ignore,
)
from trainer.features import (
    ImageDataset,
    class_centroids,
    evaluate_retrieval,
    extract_features,
    loader_options,
)
from trainer.memory import HybridMemory
from trainer.models import build_encoder, save_model

MODEL_NAME = "model.pt"


@dataclass(frozen=True)
class DomainData:
    """Images of one domain: a root folder and items relative to it."""

    root: Path
    items: list[Item]

    def fingerprint(self) -> str:
        """Identifies the image list, so a checkpoint is never resumed on other data."""
        data = "\n".join(i.path for i in self.items).encode()
        return hashlib.sha1(data, usedforsecurity=False).hexdigest()  # an id, not a secret


@dataclass(frozen=True)
class EvalData:
    """A labeled query/gallery split, evaluated for information only."""

    root: Path
    query: list[Item]
    gallery: list[Item]


@dataclass(frozen=True)
class TrainResult:
    status: str  # "succeeded" | "cancelled"
    model_path: Path | None
    epochs_done: int
    last_evaluation: dict[str, float] | None


def resolve_device(name: str) -> torch.device:
    """`auto` → the first GPU when there is one, else the CPU; a missing GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but no CUDA GPU is available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA GPU(s) visible")
    return device


def _pseudo_label_stats(labels: np.ndarray) -> tuple[int, int]:
    sizes = np.bincount(labels)
    return int((sizes > 1).sum()), int((sizes == 1).sum())


class SpCLTrainer:
    """Trains one encoder by SpCL into `out_dir` (checkpoint, model file)."""

    def __init__(
        self,
        config: TrainConfig,
        out_dir: Path,
        *,
        target: DomainData | None = None,
        source: DomainData | None = None,
        evaluation: EvalData | None = None,
        callback: Callback = ignore,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        if target is None and source is None:
            raise ValueError("need a target collection, a source collection, or both")
        if target is not None and not target.items:
            raise ValueError("the target collection has no training images")
        if source is not None:
            if not source.items:
                raise ValueError("the source collection has no training images")
            if any(i.pid is None for i in source.items):
                raise ValueError("every source training image needs an identity label")
        self.cfg = config
        self.out = Path(out_dir)
        self.target = target
        self.source = source
        self.evaluation = evaluation
        self.emit = callback
        self.should_stop = should_stop
        self.mode = "uda" if source and target else ("usl" if target else "source_only")
        self.device = resolve_device(config.device)
        self.amp = config.amp and self.device.type == "cuda"
        self.channels_last = config.channels_last or self.device.type == "cuda"
        # Source identities as memory rows 0..S-1 (any pid values → contiguous classes).
        if source is not None:
            _, self.source_labels = np.unique([i.pid for i in source.items], return_inverse=True)
            self.num_classes = int(self.source_labels.max()) + 1
        else:
            self.source_labels = np.zeros(0, np.int64)
            self.num_classes = 0
        self.num_target = len(target.items) if target else 0
        # The DBSCAN radius: fixed, or chosen from the data at the first clustering.
        self.eps: float | None = None if config.auto_eps else float(config.eps)
        self.target_cams = camera_ids([i.camid for i in target.items]) if target else None
        self.camera_loss = (
            CameraProxyLoss(self.target_cams)
            if config.camera_contrast and self.target_cams is not None
            else None
        )

    # --- setup -------------------------------------------------------------------------

    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        model = build_encoder(
            cfg.arch, pretrained=cfg.pretrained, pooling=cfg.pooling, dsbn=self.mode == "uda"
        )
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=cfg.step_size, gamma=0.1
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.memory = HybridMemory(
            model.feature_dim, self.num_classes + self.num_target, cfg.temp, cfg.momentum
        ).to(self.device)

    def _loader(
        self, data: DomainData, pids: np.ndarray, seed_offset: int, image_anchors: bool = False
    ) -> DataLoader:
        cfg = self.cfg
        sampler = IdentityBatchSampler(
            pids,
            [i.camid for i in data.items],
            cfg.batch_size,
            cfg.num_instances,
            cfg.iters,
            seed=cfg.seed * 2 + seed_offset,
            image_anchors=image_anchors,
        )
        dataset = ImageDataset(
            data.root, [i.path for i in data.items], train_transform(cfg.height, cfg.width)
        )
        return DataLoader(
            dataset, batch_sampler=sampler, **loader_options(self.device, cfg.workers)
        )

    def _features(self, data: DomainData, domain: str) -> torch.Tensor:
        dataset = ImageDataset(
            data.root, [i.path for i in data.items], eval_transform(self.cfg.height, self.cfg.width)
        )
        return extract_features(
            self.model,
            dataset,
            self.device,
            workers=self.cfg.workers,
            domain=domain,
            amp=self.amp,
            channels_last=self.channels_last,
        )

    def _init_memory(self) -> None:
        """Source class centroids (source BN branch) followed by target instance features."""
        rows = []
        if self.source is not None:
            rows.append(class_centroids(self._features(self.source, "source"), self.source_labels))
        if self.target is not None:
            rows.append(self._features(self.target, "target"))
        self.memory.features.copy_(torch.cat(rows).to(self.device))
        self.memory.labels.copy_(torch.arange(len(self.memory.labels), device=self.device))

    # --- checkpoints -------------------------------------------------------------------

    def _fingerprints(self) -> dict[str, str]:
        return {
            name: data.fingerprint()
            for name, data in (("source", self.source), ("target", self.target))
            if data is not None
        }

    def _save(self, epoch: int, iteration: int, threshold: float | None) -> None:
        path = save_checkpoint(
            self.out / CHECKPOINT_NAME,
            {
                "config": self.cfg.to_dict(),
                "mode": self.mode,
                "data": self._fingerprints(),
                "epoch": epoch,
                "iteration": iteration,
                "threshold": threshold,
                "eps": self.eps,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "memory": self.memory.state_dict(),
                "rng": rng_state(),
            },
        )
        self.emit(CheckpointSaved(epoch=epoch, iteration=iteration, path=str(path)))

    def _restore(self, state: dict) -> tuple[int, int, float | None]:
        saved = TrainConfig.from_stored(state["config"])
        changed = self.cfg.differences(saved)
        if changed:
            raise ValueError(
                f"cannot resume: options differ from the checkpoint's ({', '.join(changed)}); "
                "use the same options or another --out"
            )
        if state["mode"] != self.mode or state["data"] != self._fingerprints():
            raise ValueError("cannot resume: the checkpoint was trained on other collections")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.memory.load_state_dict(state["memory"])
        set_rng_state(state["rng"])
        self.eps = state.get("eps", self.eps)  # checkpoints from before auto-eps: the fixed one
        return state["epoch"], state["iteration"], state["threshold"]

    # --- the loop ----------------------------------------------------------------------

    def _refresh(self, epoch: int) -> None:
        """Re-embed the target rows of the memory every `refresh_every` epochs.

        A row moves only when its image is in a batch; when an epoch sees a fraction of the
        target set (short schedules, large sets), most rows still hold the features of the
        starting model many epochs later and the clustering works on those. A fresh pass (the
        features Cluster Contrast and ICE cluster on every epoch) brings them up to date.
        """
        every = self.cfg.refresh_every
        if self.target is None or not every or epoch == 0 or epoch % every:
            return
        fresh = self._features(self.target, "target").to(self.device)
        self.memory.features[self.num_classes :] = fresh

    def _cluster(self, epoch: int, threshold: float | None) -> float | None:
        """Re-label the memory's target rows; returns the (first-epoch) threshold."""
        self.emit(Phase(name="clustering", epoch=epoch))
        start = time.perf_counter()
        self._refresh(epoch)
        features = self.memory.features[self.num_classes :]
        if self.cfg.camera_centring:
            features = camera_centred(features, self.target_cams)
        dist = jaccard_distance(features, k1=self.cfg.k1, k2=self.cfg.k2)
        if self.eps is None:
            choice = choose_eps(dist, self.cfg.eps_gap)
            self.eps = choice.eps
            scores = {f"{e:g}": n for e, n in choice.effective_clusters.items()}
            self.emit(EpsChosen(epoch=epoch, eps=choice.eps, score_by_eps=scores))
        labels, threshold = self_paced_labels(
            dist, eps=self.eps, eps_gap=self.cfg.eps_gap, indep_threshold=threshold
        )
        del dist
        self.memory.labels[self.num_classes :] = torch.from_numpy(labels + self.num_classes)
        clusters, unclustered = _pseudo_label_stats(labels)
        self.emit(
            EpochStart(
                epoch=epoch,
                clusters=clusters,
                unclustered=unclustered,
                threshold=threshold,
                clustering_seconds=round(time.perf_counter() - start, 3),
                eps=self.eps,
            )
        )
        return threshold

    def _step(self, source_batch, target_batch) -> tuple[float, float | None, float | None]:
        """One optimisation step; returns (loss, loss_source, loss_target)."""
        dev = self.device
        images, parts = [], []
        if source_batch is not None:
            images.append(source_batch[0])
            rows = torch.from_numpy(self.source_labels[source_batch[1].numpy()])
            parts.append(rows)
        if target_batch is not None:
            images.append(target_batch[0])
            parts.append(target_batch[1] + self.num_classes)
        inputs = torch.cat(images).to(dev, non_blocking=True)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, enabled=self.amp):
            feats = self.model(inputs)
        chunks = feats.split([len(p) for p in parts])
        losses = [self.memory(f, rows.to(dev)) for f, rows in zip(chunks, parts, strict=True)]
        if self.camera_loss is not None and target_batch is not None:
            losses[-1] = losses[-1] + self.camera_loss(
                chunks[-1],
                target_batch[1].to(dev),
                self.memory.features[self.num_classes :],
                self.memory.labels[self.num_classes :] - self.num_classes,
            )
        loss = sum(losses)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        values = [float(x.detach()) for x in losses]
        loss_source = values[0] if source_batch is not None else None
        loss_target = values[-1] if target_batch is not None else None
        return float(sum(values)), loss_source, loss_target

    def _evaluate(self, epoch: int) -> dict[str, float]:
        self.emit(Phase(name="evaluating", epoch=epoch))
        ev = self.evaluation
        metrics = evaluate_retrieval(
            self.model,
            ev.root,
            ev.query,
            ev.gallery,
            eval_transform(self.cfg.height, self.cfg.width),
            self.device,
            workers=self.cfg.workers,
            amp=self.amp,
            flip=self.cfg.flip,
            channels_last=self.channels_last,
        )
        self.emit(Evaluation(epoch=epoch, **metrics))
        return metrics

    def run(self, resume: bool = False) -> TrainResult:
        """Train to the last epoch (or until `should_stop`); write `model.pt` on success."""
        cfg = self.cfg
        started = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        ckpt = self.out / CHECKPOINT_NAME
        self.emit(Phase(name="initialising", epoch=0))
        self._build()
        start_epoch, start_iter, threshold = 0, 0, None
        if resume and ckpt.exists():
            start_epoch, start_iter, threshold = self._restore(load_checkpoint(ckpt))
        else:
            self._init_memory()
        self.emit(
            RunStart(
                mode=self.mode,
                epochs=cfg.epochs,
                iters=cfg.iters,
                start_epoch=start_epoch,
                start_iteration=start_iter,
                source_images=len(self.source.items) if self.source else 0,
                source_classes=self.num_classes,
                target_images=self.num_target,
                device=str(self.device),
            )
        )
        loaders = {}
        if self.source is not None:
            loaders["source"] = self._loader(self.source, self.source_labels, 0)
        if self.target is not None:
            initial = np.arange(self.num_target)  # replaced by pseudo-labels every epoch
            loaders["target"] = self._loader(self.target, initial, 1, cfg.image_anchors)
        last_eval = None
        self.model.train()
        for epoch in range(start_epoch, cfg.epochs):
            if self.target is not None:
                if start_iter == 0:
                    threshold = self._cluster(epoch, threshold)
                labels = (self.memory.labels[self.num_classes :] - self.num_classes).cpu()
                loaders["target"].batch_sampler.set_identities(
                    labels.numpy(), [i.camid for i in self.target.items]
                )
            for loader in loaders.values():
                loader.batch_sampler.set_epoch(epoch, skip=start_iter)
            self.emit(Phase(name="training", epoch=epoch))
            stopped = self._train_epoch(epoch, start_iter, loaders)
            if stopped is not None:
                self._save(epoch, stopped, threshold)
                self.emit(RunEnd("cancelled", epoch, None, time.perf_counter() - started))
                return TrainResult("cancelled", None, epoch, last_eval)
            start_iter = 0
            self.scheduler.step()
            if self.evaluation is not None and (
                (epoch + 1) % cfg.eval_step == 0 or epoch + 1 == cfg.epochs
            ):
                last_eval = self._evaluate(epoch)
                self.model.train()
            self._save(epoch + 1, 0, threshold)
        model_path = save_model(
            self.out / MODEL_NAME,
            self.model,
            height=cfg.height,
            width=cfg.width,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            flip=cfg.flip,
            extra={
                "mode": self.mode,
                "config": cfg.to_dict(),
                "evaluation": last_eval or {},
                "source_classes": self.num_classes,
                "target_images": self.num_target,
            },
        )
        self.emit(RunEnd("succeeded", cfg.epochs, str(model_path), time.perf_counter() - started))
        return TrainResult("succeeded", Path(model_path), cfg.epochs, last_eval)

    def _train_epoch(self, epoch: int, start_iter: int, loaders: dict) -> int | None:
        """Run the epoch's remaining iterations; returns the iteration reached if stopped."""
        cfg = self.cfg
        iters = {name: iter(loader) for name, loader in loaders.items()}
        totals = np.zeros(3)
        counts = np.zeros(3)
        images = 0
        epoch_start = time.perf_counter()
        for it in range(start_iter, cfg.iters):
            if self.should_stop():
                return it
            tick = time.perf_counter()
            source_batch = next(iters["source"]) if "source" in iters else None
            target_batch = next(iters["target"]) if "target" in iters else None
            loss, loss_s, loss_t = self._step(source_batch, target_batch)
            n = sum(len(b[1]) for b in (source_batch, target_batch) if b is not None)
            images += n
            for k, value in enumerate((loss, loss_s, loss_t)):
                if value is not None:
                    totals[k] += value
                    counts[k] += 1
            self.emit(
                Iteration(
                    epoch=epoch,
                    iteration=it + 1,
                    iters=cfg.iters,
                    loss=loss,
                    loss_source=loss_s,
                    loss_target=loss_t,
                    lr=self.optimizer.param_groups[0]["lr"],
                    images_per_s=n / max(time.perf_counter() - tick, 1e-9),
                )
            )
        seconds = time.perf_counter() - epoch_start
        means = [float(t / c) if c else None for t, c in zip(totals, counts, strict=True)]
        self.emit(
            EpochEnd(
                epoch=epoch,
                loss=means[0] if means[0] is not None else 0.0,
                loss_source=means[1],
                loss_target=means[2],
                lr=self.optimizer.param_groups[0]["lr"],
                images_per_s=images / max(seconds, 1e-9),
                seconds=seconds,
            )
        )
        return None
