"""Bi-stage trainer for :class:`seda_fast.SeDA`: stage-1 epochs, ``set_stage(2)``, stage-2 epochs.

Each stage gets a fresh AdamW over the parameters that stage trains (``requires_grad``), with
an optional per-step cosine decay. Mini-batches are drawn from in-memory tensors by a seeded
``torch.Generator`` that also feeds the losses' random draws (t, eps, start noise), so two runs
with the same seed and the same initial model give bitwise-identical parameters (on CPU).
:meth:`Trainer.fit` checks its data for NaN/Inf once, so bad data is reported, not trained on (the
model's ``check_inputs`` is turned on for later calls; the steps skip its per-batch checks).
``cuda_graph=True`` runs each step through :class:`seda_fast.StepGraph` (one CUDA-graph replay
per step on CUDA with the fused backend).

Typical use::

    model = make_model(config, seed=0)
    trainer = Trainer(model, stage1_epochs=5, stage2_epochs=5, lr=1e-3, seed=0)
    trainer.fit(train_v, train_y, class_text, eval_visual=test_v, eval_labels=test_y)
    trainer.save("run.pt");  trainer = Trainer.load("run.pt")
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from .. import validation as val
from ..config import SeDAConfig
from ..model import SeDA
from ..step_graph import StepGraph, fresh_weight_casts, train_step
from .loop import check_dataset, cosine_lambda, eval_mode, minibatches, progress_bar

_CHECKPOINT_FORMAT = 1


# --------------------------------------------------------------------------- helpers shared with baselines


def make_model(config: SeDAConfig, seed: int = 0, backend: str = "auto") -> SeDA:
    """A fresh :class:`SeDA` whose initial parameters depend only on ``seed`` (the global RNG is
    left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return SeDA(config, backend=backend)


# --------------------------------------------------------------------------- trainer


class Trainer:
    """Two-stage SeDA training (docs/math.md, "Stage 1" and "Stage 2").

    Args:
        model: the :class:`SeDA` to train (its ``check_inputs`` is turned on; :meth:`fit` checks
            its data for NaN/Inf once and its steps skip the per-batch checks).
        stage1_epochs, stage2_epochs: epochs per stage (>= 0).
        batch_size: mini-batch size (>= 1).
        lr: AdamW learning rate of stage 1 (> 0); ``stage2_lr`` that of stage 2 (default ``lr``).
        weight_decay: AdamW weight decay (>= 0).
        schedule: ``"cosine"`` (per-step decay to 0 over the stage) or ``"constant"``.
        seed: seeds the generator for shuffling and for the losses' random draws.
        progress: show tqdm bars.
        eval_batch_size: batch size of :meth:`predict`.
        grad_clip: max gradient norm, or ``None`` for no clipping.
        cuda_graph: run each step through :class:`seda_fast.StepGraph`: on CUDA with
            ``backend="triton"`` a step is one graph replay (AdamW is built ``capturable``; its lr
            becomes a device tensor); elsewhere the same steps run directly. The loss is then
            checked for NaN/Inf after the step, when the steps' losses are read back (every
            ``READ_EVERY`` steps and at an epoch's end, so the host does not wait for the device
            after each step): a non-finite step's update, and those of the steps after it up to
            the read, have been applied when the error is raised. A capture that fails raises
            from :meth:`fit`; fit again and every later step (the next stage's too) runs directly.

    ``history`` is a list of per-epoch dicts: ``stage``, ``epoch``, ``loss`` (mean over the
    epoch) and the loss parts, ``seconds``, and when evaluation data is given ``accuracy``
    (stage 2: the classifier head) or ``center_accuracy`` (stage 1: the semantic feature ``s``
    assigned to its nearest category center; the head is not trained yet).
    """

    READ_EVERY = 16  # steps whose losses are read back to the host together (one sync)

    def __init__(self, model: SeDA, *, stage1_epochs: int = 10, stage2_epochs: int = 10, batch_size: int = 256,
                 lr: float = 1e-3, stage2_lr: float | None = None, weight_decay: float = 1e-4,
                 schedule: str = "cosine", seed: int = 0, progress: bool = True, eval_batch_size: int = 1024,
                 grad_clip: float | None = None, cuda_graph: bool = False):
        if not isinstance(model, SeDA):
            raise TypeError(f"model must be a seda_fast.SeDA, got {type(model).__name__}")
        self.stage1_epochs = val.check_int("stage1_epochs", stage1_epochs, 0)
        self.stage2_epochs = val.check_int("stage2_epochs", stage2_epochs, 0)
        self.batch_size = val.check_int("batch_size", batch_size)
        self.eval_batch_size = val.check_int("eval_batch_size", eval_batch_size)
        self.lr = val.check_number("lr", lr, positive=True)
        self.stage2_lr = self.lr if stage2_lr is None else val.check_number("stage2_lr", stage2_lr, positive=True)
        self.weight_decay = val.check_number("weight_decay", weight_decay)
        if schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
        self.schedule = schedule
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.seed = seed
        self.grad_clip = None if grad_clip is None else val.check_number("grad_clip", grad_clip, positive=True)
        if not isinstance(cuda_graph, bool):
            raise TypeError(f"cuda_graph must be a bool, got {type(cuda_graph).__name__}")
        self.cuda_graph = cuda_graph
        self.progress = bool(progress)
        self.model = model
        model.check_inputs = True
        self.generator = torch.Generator(device=model.device).manual_seed(seed)
        self.history: list[dict] = []
        self.epochs_done = {1: 0, 2: 0}
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self._steps_per_epoch: int | None = None
        self._graph_step: StepGraph | None = None

    # ------------------------------------------------------------------ settings round trip
    def settings(self) -> dict:
        """The constructor arguments (what a checkpoint needs to rebuild this trainer)."""
        return {"stage1_epochs": self.stage1_epochs, "stage2_epochs": self.stage2_epochs,
                "batch_size": self.batch_size, "lr": self.lr, "stage2_lr": self.stage2_lr,
                "weight_decay": self.weight_decay, "schedule": self.schedule, "seed": self.seed,
                "eval_batch_size": self.eval_batch_size, "grad_clip": self.grad_clip, "cuda_graph": self.cuda_graph}

    # ------------------------------------------------------------------ optimizer
    def _new_optimizer(self, stage: int, steps_per_epoch: int) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        lr = self.lr if stage == 1 else self.stage2_lr
        capturable = self.cuda_graph and self.model.device.type == "cuda"  # AdamW steps capturable only there
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay, capturable=capturable)
        epochs = self.stage1_epochs if stage == 1 else self.stage2_epochs
        total = steps_per_epoch * epochs if self.schedule == "cosine" else None
        self.scheduler = (torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine_lambda(total))
                          if total else None)
        self._steps_per_epoch = steps_per_epoch
        # after a failed capture no second try (the failed capture's memory stays reserved)
        failure = None if self._graph_step is None else self._graph_step.capture_failure
        self._graph_step = StepGraph(self.model, self.optimizer, grad_clip=self.grad_clip, generator=self.generator,
                                     capture_failure=failure) if self.cuda_graph else None

    # ------------------------------------------------------------------ data
    def _check_text(self, text, n: int, text_kind: str) -> str:
        cfg = self.model.config
        val.text_is_per_class(text_kind, None, cfg.num_classes)  # a bad text_kind fails first
        if not isinstance(text, torch.Tensor):
            raise TypeError(f"text must be a torch.Tensor [num_classes={cfg.num_classes}, {cfg.text_dim}] "
                            f"or [N={n}, {cfg.text_dim}], got {type(text).__name__}")
        if text.dim() != 2 or text.shape[1] != cfg.text_dim or text.shape[0] not in (cfg.num_classes, n):
            raise ValueError(f"text must have shape [{cfg.num_classes}, {cfg.text_dim}] (class texts) or "
                             f"[{n}, {cfg.text_dim}] (one per training sample), got {list(text.shape)}")
        val.check_device("text", text, self.model.device)
        text_kind = "class" if val.text_is_per_class(text_kind, text.shape[0], cfg.num_classes) else "sample"
        if text_kind == "class" and text.shape[0] != cfg.num_classes:
            raise ValueError(f"class text must have {cfg.num_classes} rows, got {text.shape[0]}")
        if text_kind == "sample" and text.shape[0] != n:
            raise ValueError(f"per-sample text must have one row per training sample ({n}), got {text.shape[0]}")
        return text_kind

    # ------------------------------------------------------------------ training
    def fit(self, visual: torch.Tensor, labels: torch.Tensor, text: torch.Tensor | None = None, *,
            eval_visual: torch.Tensor | None = None, eval_labels: torch.Tensor | None = None,
            text_kind: str = "auto", max_epochs: int | None = None) -> list[dict]:
        """Run the remaining epochs of stage 1, then of stage 2 (resumes after :meth:`load`).

        ``visual [N, Dv]``, ``labels [N]``; ``text`` is ``[C, Dt]`` class texts or ``[N, Dt]``
        per-sample texts (needed when stage 2 has epochs). ``max_epochs`` stops after that many
        epochs in this call (e.g. to save a checkpoint between calls); resuming with the same data
        continues exactly as an uninterrupted run. Returns ``history``.
        """
        cfg = self.model.config
        budget = None if max_epochs is None else val.check_int("max_epochs", max_epochs, 0)
        device = self.model.device
        if self.generator.device.type != device.type:
            raise ValueError(f"the model is on {device} but the trainer's generator is on {self.generator.device}: "
                             "move the model before building the Trainer")
        check_dataset(visual, labels, num_classes=cfg.num_classes, visual_dim=cfg.visual_dim, device=device)
        if (eval_visual is None) != (eval_labels is None):
            raise ValueError("eval_visual and eval_labels must be given together")
        if eval_visual is not None:
            check_dataset(eval_visual, eval_labels, "eval_visual", "eval_labels",
                          num_classes=cfg.num_classes, visual_dim=cfg.visual_dim, device=device)
        in_range_of = self.model.input_check_dtype()  # the dtype whose range the data must fit
        if self.stage2_epochs > self.epochs_done[2]:
            if text is None:
                raise ValueError("text is required for stage 2 ([num_classes, text_dim] class texts "
                                 "or [N, text_dim] per-sample texts)")
            text_kind = self._check_text(text, visual.shape[0], text_kind)
            val.check_finite("text", text, in_range_of)
        # once each (a host read): the steps and the evaluations skip the per-batch checks
        val.check_finite("visual", visual, in_range_of)
        if eval_visual is not None:
            val.check_finite("eval_visual", eval_visual, in_range_of)
        with fresh_weight_casts(device):  # (under a caller's autocast: no stale weight copies)
            self._fit(visual, labels, text, text_kind, eval_visual, eval_labels, budget)
        return self.history

    def _fit(self, visual, labels, text, text_kind, eval_visual, eval_labels, budget) -> None:
        for stage, epochs in ((1, self.stage1_epochs), (2, self.stage2_epochs)):
            if self.epochs_done[stage] >= epochs:
                continue
            if self.model.stage != stage:
                self.model.set_stage(stage)
                self.optimizer = None
            steps = math.ceil(visual.shape[0] / self.batch_size)
            if self.optimizer is not None and self._steps_per_epoch != steps and self.epochs_done[stage] > 0:
                raise ValueError(
                    f"stage {stage} is part-done with {self._steps_per_epoch} steps per epoch but this data gives "
                    f"{steps}: resume with the same training data (a new size would reset AdamW and the schedule)")
            if self.optimizer is None or self._steps_per_epoch != steps:
                self._new_optimizer(stage, steps)
            while self.epochs_done[stage] < epochs:
                if budget is not None and budget == 0:
                    return
                self._epoch(stage, visual, labels, text, text_kind, eval_visual, eval_labels)
                budget = None if budget is None else budget - 1
        if self.stage2_epochs and self.model.stage != 2:
            self.model.set_stage(2)

    def _epoch(self, stage, visual, labels, text, text_kind, eval_visual, eval_labels) -> None:
        model = self.model
        model.train()
        epoch = self.epochs_done[stage] + 1
        total_epochs = self.stage1_epochs if stage == 1 else self.stage2_epochs
        batches = minibatches(visual.shape[0], self.batch_size, self.generator)
        sums: dict[str, float] = {}
        pending: list = []  # (the step's [loss, *parts] on the device, its rows), read back together
        names = None
        start = time.perf_counter()
        bar = progress_bar(batches, self.progress, f"stage {stage} epoch {epoch}/{total_epochs}")

        def read_back():  # one transfer for the pending steps (a sync: the host waits for the device)
            rows = torch.stack([t for t, _ in pending]).tolist()
            for i, (values, (_, n)) in enumerate(zip(rows, pending)):
                if not math.isfinite(values[0]):
                    after = len(rows) - 1 - i
                    raise FloatingPointError(
                        f"stage-{stage} loss became {values[0]} at epoch {epoch}; lower lr or enable grad_clip "
                        f"(cuda_graph: that step's update was applied"
                        + (f", and those of the {after} steps after it)" if after else ")"))
                for key, value in zip(names, values):
                    sums[key] = sums.get(key, 0.0) + value * n
            pending.clear()
            if self.progress:
                bar.set_postfix(loss=f"{rows[-1][0]:.4f}", refresh=False)  # shown at the next redraw
        with model.unchecked_inputs():  # fit checked the data (each check reads back)
            for step, idx in enumerate(bar):
                v, y = visual[idx], labels[idx]
                inputs = (v, y) if stage == 1 else (v, y, text if text_kind == "class" else text[idx])
                if self._graph_step is not None:  # the whole step; its loss is checked after it
                    loss, parts = self._graph_step(*inputs, text_kind=text_kind, return_parts=True)
                else:
                    loss, parts = self._direct_step(stage, epoch, inputs, text_kind)
                if self.scheduler is not None:
                    self.scheduler.step()
                names = ("loss", *parts)
                pending.append((torch.stack([loss.float(), *(p.float() for p in parts.values())]), idx.numel()))
                if len(pending) == self.READ_EVERY or step == len(batches) - 1:  # the epoch's last: the bar shows it
                    read_back()
        record = {"stage": stage, "epoch": epoch, "seconds": time.perf_counter() - start}
        record.update({k: v / visual.shape[0] for k, v in sums.items()})
        if eval_visual is not None:
            with model.unchecked_inputs():  # fit checked eval_visual
                if stage == 2:
                    record["accuracy"] = self.evaluate(eval_visual, eval_labels)
                else:
                    record["center_accuracy"] = self.center_accuracy(eval_visual, eval_labels)
        self.history.append(record)
        self.epochs_done[stage] = epoch

    def _direct_step(self, stage, epoch, inputs, text_kind):
        """One step issued op by op; a non-finite loss raises before it changes anything."""
        def check_loss(loss):
            if not torch.isfinite(loss):
                raise FloatingPointError(f"stage-{stage} loss became {loss.item()} at epoch {epoch}; "
                                         "lower lr or enable grad_clip")
        return train_step(self.model, self.optimizer, inputs, generator=self.generator, grad_clip=self.grad_clip,
                          text_kind=text_kind, check_loss=check_loss)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, visual: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, C]`` of the inference chain, in batches of ``eval_batch_size``."""
        val.check_features("visual", visual, self.model.config.visual_dim)
        with eval_mode(self.model):
            return torch.cat([self.model(chunk) for chunk in visual.split(self.eval_batch_size)])

    def evaluate(self, visual: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 accuracy of the classifier head on ``visual [N, Dv]`` / ``labels [N]``."""
        check_dataset(visual, labels, num_classes=self.model.config.num_classes,
                      visual_dim=self.model.config.visual_dim)
        return float((self.predict(visual).argmax(1) == labels).to(torch.float64).mean())

    @torch.no_grad()
    def center_accuracy(self, visual: torch.Tensor, labels: torch.Tensor) -> float:
        """Stage-1 metric: accuracy of assigning the semantic feature ``s`` to its nearest center."""
        check_dataset(visual, labels, num_classes=self.model.config.num_classes,
                      visual_dim=self.model.config.visual_dim)
        with eval_mode(self.model):
            s = torch.cat([self.model.semantic(chunk) for chunk in visual.split(self.eval_batch_size)])
        dist = torch.cdist(s.to(torch.float32), self.model.centers.to(torch.float32))
        return float((dist.argmin(1) == labels).to(torch.float64).mean())

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything needed to resume: config, model and optimizer state, stage, history, RNG."""
        return {
            "format": _CHECKPOINT_FORMAT,
            "config": self.model.config.to_dict(),
            "model": self.model.state_dict(),
            "stage": self.model.stage,
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "steps_per_epoch": self._steps_per_epoch,
            "epochs_done": dict(self.epochs_done),
            "history": [dict(h) for h in self.history],
            "trainer": self.settings(),
            "generator": self.generator.get_state(),
            "generator_device": self.generator.device.type,
            "torch": str(torch.__version__),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`state_dict` to ``path`` (atomically: temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, model: SeDA | None = None, *, progress: bool = True,
             backend: str = "auto") -> "Trainer":
        """Rebuild a trainer from :meth:`save`. With ``model`` given, its config must equal the
        checkpoint's (else ``ValueError`` listing the differing fields) and it is loaded in place;
        without, a new model is built from the stored config on CPU."""
        ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or ckpt.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a seda_fast trainer checkpoint (format {_CHECKPOINT_FORMAT})")
        config = SeDAConfig.from_dict(ckpt["config"])
        if model is None:
            model = make_model(config, backend=backend)
        elif not isinstance(model, SeDA):
            raise TypeError(f"model must be a seda_fast.SeDA or None, got {type(model).__name__}")
        elif model.config != config:
            mine, theirs = model.config.to_dict(), config.to_dict()
            diff = {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}
            raise ValueError(f"model config does not match the checkpoint {path}: "
                             + ", ".join(f"{k}: model={a!r} checkpoint={b!r}" for k, (a, b) in diff.items()))
        model.load_state_dict(ckpt["model"])
        model.set_stage(ckpt["stage"])
        trainer = cls(model, progress=progress, **ckpt["trainer"])
        trainer.history = [dict(h) for h in ckpt["history"]]
        trainer.epochs_done = {int(k): int(v) for k, v in ckpt["epochs_done"].items()}
        saved = ckpt.get("generator_device", "cpu")
        if saved != model.device.type:
            raise ValueError(f"{path} was saved with its random generator on {saved} but the model is on "
                             f"{model.device}: load it into a model on {saved} (the draws are device-specific)")
        trainer.generator.set_state(ckpt["generator"])
        if ckpt["optimizer"] is not None:
            trainer._new_optimizer(ckpt["stage"], ckpt["steps_per_epoch"])
            trainer.optimizer.load_state_dict(ckpt["optimizer"])
            if trainer.scheduler is not None and ckpt["scheduler"] is not None:
                trainer.scheduler.load_state_dict(ckpt["scheduler"])
        return trainer
