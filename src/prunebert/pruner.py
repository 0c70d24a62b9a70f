"""The Pruner: optimizer-shaped owner of targets, method, schedule and masks.

Use it like an optimizer (`PruningCallback` does this for the HF Trainer):

    pruner = Pruner(model, PruningConfig(method="magnitude", sparsity=0.4))
    pruner.start(total_steps)                      # builds the schedule, masks gradients
    for step in range(total_steps):
        loss.backward(); pruner.after_backward()   # after gradient clipping, if any; before the step
        optimizer.step(); pruner.after_optimizer_step(optimizer, lr)
        pruner.update(step + 1, optimizer)         # new masks when the schedule says so
    pruner.bake()                                  # zeros stay in the weights; hooks removed

Invariant: after `after_optimizer_step` and `update`, every pruned weight is exactly 0.0, and its
gradient (from `after_backward` on) and optimizer moments are 0 too, so AdamW (weight decay, momentum),
gradient accumulation, clipping and mixed precision cannot move it.

Second-order methods (oBERT, `obs`) ask for fresh gradient samples before each mask update
(`gradient_request`): the pruner draws them from its `gradient_sampler` (PruningCallback gives it one
over the Trainer's training data, `prune_oneshot` one over calibration batches), masks them and hands
them to the method, without touching the training run's gradients or random state.

Gradients are masked as they are computed (a hook per weight), except for methods that read the pruned
entries' gradients (`needs_pruned_gradients`, movement pruning's straight-through estimator): for them
`after_backward` masks `weight.grad` after the method has read it, so it must run before every
optimizer step, and gradient clipping (which runs before it) sees the pruned entries' gradients too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from prunebert.config import PruningConfig
from prunebert.distributed import broadcast_masks
from prunebert.errors import PrunebertError
from prunebert.io import atomic_path
from prunebert.masks import MASKS_FILE, PackedMasks, global_masks, layerwise_masks, load_masks, save_masks
from prunebert.methods import create_method
from prunebert.sampling import Batch, GradientSampler
from prunebert.schedules import Fixed, Iterative, Schedule, build_schedule
from prunebert.targets import Target, find_targets

__all__ = ["METHOD_STATE_FILE", "Pruner", "prune_oneshot", "schedule_of"]

METHOD_STATE_FILE = "prunebert_method_state.safetensors"


def _weight(model: nn.Module, name: str) -> nn.Parameter:
    weight = model.get_submodule(name).weight
    assert isinstance(weight, nn.Parameter)
    return weight


class Pruner:
    """Chooses, applies and enforces masks on a model's target weights."""

    def __init__(self, model: nn.Module, config: PruningConfig) -> None:
        if not isinstance(model, nn.Module) or not isinstance(config, PruningConfig):
            raise PrunebertError(
                f"Pruner(model, config) takes a torch module and a PruningConfig, not {type(model).__name__} "
                f"and {type(config).__name__}; e.g. Pruner(model, PruningConfig(sparsity=0.9))"
            )
        self.model = model
        self.config = config
        self.targets: list[Target] = find_targets(
            model, config.roles, config.targets, config.include_embeddings
        )
        self.method = create_method(config.method, config.options, config.seed)
        self.method.bind(model, self.targets, config)
        # one bit per target weight; reads unpack a fresh bool tensor, writes are assignments
        self.masks = PackedMasks(
            {t.param_name: torch.ones_like(w, dtype=torch.bool) for t, w in self._pairs()}
        )
        #: transferred masks (`keep_fixed`): of targets, floors a new mask may only add zeros to; of other
        #: weights, kept fixed beside the targets (enforced, gradients masked, saved)
        self.floor, self.fixed = PackedMasks(), PackedMasks()
        self.schedule: Schedule = Fixed(0.0)
        self.sparsity = 0.0  # the schedule's value at the last update
        self.history: list[tuple[int, float]] = []
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._gradients_masked = False  # by `after_backward`, for methods that read pruned gradients
        self._started = False  # `start` built the schedule: `update` means something
        #: where methods that ask for gradient samples (`obs`) get them at each mask update
        self.gradient_sampler: GradientSampler | None = None

    # -- the weights -------------------------------------------------------------------------------
    def _pairs(self) -> list[tuple[Target, nn.Parameter]]:
        return [(t, _weight(self.model, t.name)) for t in self.targets]

    def weights(self) -> dict[str, nn.Parameter]:
        """Target weights by state-dict key, looked up afresh (robust to `model.to(...)`)."""
        return {t.param_name: w for t, w in self._pairs()}

    def _masked(self) -> dict[str, tuple[nn.Parameter, PackedMasks]]:
        """Every weight with a mask, targets and fixed ones, with the masks that hold its mask."""
        fixed = {n: (self.model.get_parameter(n), self.fixed) for n in self.fixed}
        return {**{n: (w, self.masks) for n, w in self.weights().items()}, **fixed}

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, total_steps: int) -> None:
        """Build the schedule for a run of `total_steps` optimizer steps and start masking gradients."""
        if not isinstance(total_steps, int) or total_steps < 1:
            raise PrunebertError(
                f"pruner.start(total_steps) needs a positive number of steps, got {total_steps!r}"
            )
        self.schedule = (
            Fixed(self.sparsity) if self.config.schedule == "fixed" else schedule_of(self.config, total_steps)
        )
        self.method.on_start(total_steps, self.schedule)
        self._started = True
        self.attach()

    def attach(self) -> None:
        """Mask each gradient as it is computed: clipping and optimizer moments never see pruned entries
        (for a method that reads pruned gradients, `after_backward` masks them instead)."""
        self.detach()
        for name, (weight, masks) in self._masked().items():
            masks[name] = masks[name].to(weight.device)
            if masks is self.fixed or not self.method.needs_pruned_gradients:
                self._hooks.append(weight.register_hook(lambda g, n=name, m=masks: g * m[n]))

    def detach(self) -> None:
        """Remove the gradient hooks."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def bake(self) -> nn.Module:
        """Write the zeros into the weights for good and remove every hook; returns the plain model."""
        self.method.finalize()
        self.enforce()
        self.detach()
        return self.model

    # -- per-step work -----------------------------------------------------------------------------
    @torch.no_grad()
    def enforce(self) -> None:
        """Set every pruned weight to exactly +0.0 (not -0.0, as `w * 0` gives for negative w: sparse
        storage then needs no sign bits)."""
        for name, (weight, masks) in self._masked().items():
            weight.masked_fill_(~masks[name], 0.0)

    def after_backward(self) -> None:
        """Let the method read gradients (e.g. movement scores) once per optimizer step, then mask the
        pruned entries' gradients if the hooks left them for the method."""
        weights = self.weights()
        self.method.after_backward(weights)
        if self.method.needs_pruned_gradients:
            self._mask_gradients(weights)

    @torch.no_grad()
    def _mask_gradients(self, weights: Mapping[str, nn.Parameter]) -> None:
        """Zero the pruned entries of every target's gradient, in place (the optimizer reads these)."""
        for name, weight in weights.items():
            if weight.grad is not None:
                weight.grad.masked_fill_(~self.masks[name].to(weight.grad.device), 0.0)
        self._gradients_masked = True

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer | None = None, lr: float = 0.0) -> None:
        """Run the method's post-step work (e.g. a proximal step), then re-apply the masks."""
        if self.method.needs_pruned_gradients and not self._gradients_masked:
            raise PrunebertError(
                f"{self.method.name} pruning needs pruner.after_backward() between loss.backward() and "
                "optimizer.step() (it reads, then masks, the gradients); PruningCallback calls it"
            )
        self._gradients_masked = False
        self.method.after_optimizer_step(self.weights(), lr)
        self.enforce()

    @torch.no_grad()
    def update(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Recompute masks if the schedule's sparsity changed at `step`; True when masks changed."""
        if not self._started:
            raise PrunebertError(
                "pruner.update() before pruner.start(total_steps): there is no schedule, nothing would be "
                "pruned; call start first (PruningCallback does), or prunebert.prune(model, ...) for one shot"
            )
        target = self.schedule.sparsity_at(step)
        if isinstance(self.schedule, Fixed) or target == self.sparsity:
            return False
        self._sample_gradients(step)
        masks = broadcast_masks(self._choose(target))  # decided once: rank 0's choice
        self.method.on_masks_changing(self.masks, masks, self.weights())  # weights not yet re-zeroed
        self._set_masks(masks)
        self.sparsity = target
        self.history.append((step, target))
        self._clear_optimizer_state(optimizer)
        self.enforce()
        self.method.on_masks_updated(target, final=target >= self.config.sparsity)
        return True

    def _sample_gradients(self, step: int) -> None:
        """Hand the method the gradient samples it asks for, pruned entries zeroed (seeded by step, so
        a resumed run draws the same mini-batches)."""
        request = self.method.gradient_request()
        if request is None:
            return
        if self.gradient_sampler is None:
            raise PrunebertError(
                f"{self.method.name} pruning needs gradient samples at each mask update: train with "
                "PruningCallback, call prune_oneshot with calibration batches, or set pruner.gradient_sampler"
            )
        weights = self.weights()
        masks = {name: self.masks[name].to(w.device) for name, w in weights.items()}
        seed = (self.config.seed * 1_000_003 + step) % 2**63
        passes = self.gradient_sampler.backwards(self.model, request.count, request.batch_size, seed)
        with closing(passes):
            for _ in passes:
                grads = {n: torch.zeros_like(w) if w.grad is None else w.grad for n, w in weights.items()}
                self.method.observe_gradients({n: g * masks[n] for n, g in grads.items()})

    def _choose(self, sparsity: float) -> dict[str, torch.Tensor]:
        weights = {n: w.detach() for n, w in self.weights().items()}
        scores = self.method.scores(weights)
        floors = self.masks if self.method.monotone else self.floor  # a transferred zero is never regrown
        scores = {n: s.masked_fill(~floors[n], -torch.inf) if n in floors else s for n, s in scores.items()}
        masks = self.method.select(scores, sparsity)
        final = sparsity >= self.config.sparsity and self.method.exact_sparsity and not self.method.structured
        if masks is None or final:  # the final masks meet the target exactly (in whole groups if structured)
            chooser = global_masks if self.config.scope == "global" else layerwise_masks
            masks = chooser(scores, sparsity)
        # never regrow, even when a transferred mask is sparser than the target
        masks = {n: m & floors[n] if n in floors else m for n, m in masks.items()}
        return masks

    def _set_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        for name, mask in masks.items():
            self.masks[name] = mask

    def _clear_optimizer_state(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Zero momentum / second moments of pruned entries so a stale update cannot move them."""
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the optimizer
        if inner is None:
            return
        for name, weight in self.weights().items():
            moments = [v for v in inner.state.get(weight, {}).values() if isinstance(v, torch.Tensor)]
            moments = [v for v in moments if v.shape == weight.shape]
            if moments:
                mask = self.masks[name]  # unpacked once for all of this weight's moments
                for value in moments:
                    value.mul_(mask)

    # -- reporting ---------------------------------------------------------------------------------
    def module_sparsity(self) -> dict[str, float]:
        """Fraction of pruned entries per target weight."""
        every = {**self.masks, **self.fixed}
        return {n: 1.0 - m.float().mean().item() for n, m in every.items()}

    def overall_sparsity(self) -> float:
        """Fraction of pruned entries over all target weights."""
        total = sum(self.masks.shape(n).numel() for n in self.masks)
        kept = sum(int(m.sum().item()) for m in self.masks.values())
        return 1.0 - kept / max(1, total)

    def metadata(self) -> dict[str, Any]:
        """What a mask file records besides the masks."""
        return {
            "config": self.config.model_dump(),
            "sparsity": self.overall_sparsity(),
            "schedule_sparsity": self.sparsity,
            "history": [[step, sparsity] for step, sparsity in self.history],
            "roles": {t.param_name: t.role for t in self.targets},
        }

    # -- persistence -------------------------------------------------------------------------------
    def save(self, directory: str | Path, with_method_state: bool = True) -> None:
        """Write masks (and, for checkpoints, the method's training state) into `directory`, masks last."""
        directory = Path(directory)
        state = self.method.state_dict()
        if with_method_state and state:
            with atomic_path(directory / METHOD_STATE_FILE) as tmp:
                save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))
        save_masks({**self.masks, **self.fixed}, directory / MASKS_FILE, self.metadata())

    def load(self, directory: str | Path) -> None:
        """Restore masks (and method state if present) saved by `save`; shapes must match this model."""
        directory = Path(directory)
        masks, meta = load_masks(directory / MASKS_FILE)
        self.load_masks(masks, source=str(directory))
        state_path = directory / METHOD_STATE_FILE
        try:
            self.sparsity = float(meta.get("schedule_sparsity", self.overall_sparsity()))  # type: ignore[arg-type]
            history = meta.get("history", [])
            self.history = [(int(s), float(v)) for s, v in history] if isinstance(history, list) else []
            if state_path.is_file():
                self.method.load_state_dict(load_file(str(state_path)))
        except (SafetensorError, OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
            detail = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            raise PrunebertError(
                f"the pruning state in {directory} is damaged ({detail}); resume from an earlier checkpoint "
                "(delete this one) or re-run with --overwrite"
            ) from None
        self.enforce()

    def keep_fixed(self, masks: Mapping[str, torch.Tensor], source: str) -> None:
        """Adopt transferred masks: a target's becomes its mask and its floor (new masks only add zeros),
        any other weight's is kept fixed beside the targets. A mask of the wrong shape is an error."""
        params = dict(self.model.named_parameters())
        for name, mask in masks.items():
            weight = params.get(name)
            if weight is None or weight.shape != mask.shape:
                problem = (
                    "names a weight the model does not have"
                    if weight is None
                    else f"has shape {tuple(mask.shape)} but the model's weight is {tuple(weight.shape)}"
                )
                raise PrunebertError(
                    f"mask for {name} in {source} {problem}; the masks come from another model"
                )
            store = (self.masks, self.floor) if name in self.masks else (self.fixed,)
            for held in store:
                held[name] = mask.to(weight.device, torch.bool)

    def load_masks(self, masks: Mapping[str, torch.Tensor], source: str = "masks") -> None:
        """Adopt masks for this model's targets; a mask for another model is a one-line error."""
        missing = sorted(set(self.masks) - set(masks))
        if missing:
            raise PrunebertError(
                f"{source} has no mask for {missing[0]} (and {len(missing) - 1} more); "
                "use masks saved from the same architecture, or the same pruning targets"
            )
        weights = self.weights()
        for name in list(self.masks):
            if masks[name].shape != self.masks.shape(name):
                raise PrunebertError(
                    f"mask for {name} in {source} has shape {tuple(masks[name].shape)} but the model's "
                    f"weight is {tuple(self.masks.shape(name))}; the masks come from another model"
                )
            self.masks[name] = masks[name].to(weights[name].device, torch.bool)


def schedule_of(config: PruningConfig, total_steps: int) -> Schedule:
    """The (non-fixed) schedule of `config` over a run of `total_steps`; one that cannot reach its target
    sparsity by the run's last step is a one-line error naming the settings to change."""
    c = config
    schedule = build_schedule(
        c.schedule,
        c.sparsity,
        total_steps,
        c.start_fraction,
        c.end_fraction,
        c.frequency,
        c.iterations,
        c.initial_sparsity,
        c.updates,
    )
    reached = schedule.sparsity_at(total_steps)
    if reached < c.sparsity - 1e-9:
        fix = {"iterative": "fewer --pruning.iterations"}.get(c.schedule, "a wider pruning window")
        raise PrunebertError(
            f"the {c.schedule} schedule reaches sparsity {reached:.3g}, not the target {c.sparsity}, in a "
            f"run of {total_steps} steps; pass {fix} or more steps (--train.max_steps / --train.epochs)"
        )
    return schedule


def prune_oneshot(
    model: nn.Module,
    config: PruningConfig,
    calibration: Sequence[Batch] | GradientSampler | None = None,
    steps: int = 1,
) -> Pruner:
    """Prune `model` to `config.sparsity` without training, in `steps` equal increments of sparsity.

    Each increment re-scores (and, for `obs`, re-samples `num_grads` gradients from `calibration`, a
    few hundred labelled examples in mini-batches, and applies the OBS update): oBERT's one-shot
    recomputations, which matter when much is removed at once. `config.schedule` is not used here:
    give it "fixed" to fine-tune afterwards under PruningCallback with these masks. Returns the pruner
    (`bake()` it to write the zeros for good).
    """
    if steps < 1:
        raise PrunebertError(f"steps must be at least 1, got {steps}")
    pruner = Pruner(model, config)
    if isinstance(calibration, GradientSampler):
        pruner.gradient_sampler = calibration
    elif calibration is not None:
        pruner.gradient_sampler = GradientSampler.from_batches(calibration)
    pruner.schedule, pruner._started = Iterative(config.sparsity, 0, steps, steps), True
    for step in range(steps):
        pruner.update(step)
    return pruner
