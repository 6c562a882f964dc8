"""The training methods, one row each: every fact the rest of the package needs about them.

`AdversarialModel` reads its defaults here, the schedulers their starting
count, the run summary the cost of a minibatch and the name of the count.

Families:

- "replay" (deat, free): each minibatch is replayed r times; every replay is
  one forward and one backward whose gradients move both the perturbation and
  the weights (one optimizer update per replay).
- "attack_then_update" (pgd, trades, mart): a K-step attack without updates,
  then one update on the result. K = 0 trains on the random start.
- "single_step" (fgsm_rs): one attack step, then one update.
- "clean" (none): ordinary training, the baseline for cost ratios.
"""

import dataclasses

from deat_tf import checks

FAMILIES = ("replay", "attack_then_update", "single_step", "clean")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method:
    """What distinguishes one training method.

    Attributes:
        name: The method's name, as `AdversarialModel(method=...)` takes it.
        family: One of `FAMILIES`.
        default_steps: Iteration count when none is given.
        minimum_steps: Smallest allowed count.
        fixed_steps: Whether the count cannot be changed (fgsm_rs, none).
        scheduled_start: Count of epoch 0 under an iteration-count scheduler;
            None when the method's count is not scheduled.
        step_size_factor: Default attack step as a multiple of epsilon.
        initialization: Default random start ("uniform", "normal", ...).
        initialization_scale: Default size of the random start; None means epsilon.
        extra_passes: Forward+backward passes per minibatch beyond one per
            iteration (the update of pgd; the clean and adversarial forwards of
            trades and mart; the update after fgsm_rs's single step).
        count_symbol: How the paper names the count: "r" (replays) or "K" (steps).
        training_loss: The loss of the update: "cross_entropy", "trades"
            (CE + beta KL, and a KL attack) or "mart".
    """

    name: str
    family: str
    default_steps: int
    minimum_steps: int
    fixed_steps: bool
    scheduled_start: int | None
    step_size_factor: float
    initialization: str
    initialization_scale: float | None
    extra_passes: int
    count_symbol: str
    training_loss: str = "cross_entropy"

    @property
    def replays(self):
        """Whether minibatches are replayed (the perturbation may then be carried)."""
        return self.family == "replay"

    @property
    def tracks_magnitude(self):
        """Whether the method computes the statistic M unless told otherwise.

        The replay methods get the input gradient for free (the next replay
        needs it) and the scheduled methods need M; fgsm_rs, whose count is
        fixed, would pay an extra input gradient at every update for a figure
        nothing reads, and clean training has no attack.
        """
        return self.family in ("replay", "attack_then_update")

    @property
    def schedulable(self):
        """Whether an iteration-count scheduler may change this method's count."""
        return self.scheduled_start is not None

    def check_steps(self, value):
        """Validates an iteration count for this method.

        Args:
            value: The count r or K.

        Returns:
            The count as an int.

        Raises:
            ValueError: If it is below the minimum, or differs from a fixed count.
        """
        if self.fixed_steps:
            if isinstance(value, bool) or value != self.default_steps:
                raise ValueError(
                    f"attack_steps is fixed at {self.default_steps} for method {self.name!r}, "
                    f"got {value!r}."
                )
            return self.default_steps
        return checks.check_count(value, "attack_steps", self.minimum_steps)

    def step_size(self, step_size, epsilon):
        """The attack step: `step_size` when given (> 0), else the method's multiple of epsilon.

        Args:
            step_size: The step asked for, or None.
            epsilon: The radius (a step of 0 is allowed with epsilon 0).

        Returns:
            The step as a float.

        Raises:
            ValueError: If the step is not > 0.
        """
        if step_size is None:
            return self.step_size_factor * epsilon
        if epsilon == 0.0 and not isinstance(step_size, bool) and step_size == 0:
            return 0.0
        return checks.check_positive(step_size, "step_size")

    def passes_per_minibatch(self, steps):
        """Forward+backward passes one minibatch costs with `steps` iterations.

        Args:
            steps: The iteration count r or K.

        Returns:
            r for deat/free, K + 1 for pgd, K + 2 for trades and mart, 2 for
            fgsm_rs, 1 for clean training.
        """
        return steps + self.extra_passes


# Attack steps of the attack-then-update methods are a quarter of epsilon
# (2/255 at 8/255); replay and single-step methods take 1.25 epsilon (10/255).
_ROWS = (
    Method(
        name="deat",
        family="replay",
        default_steps=1,
        minimum_steps=1,
        fixed_steps=False,
        scheduled_start=1,
        step_size_factor=1.25,
        initialization="uniform",
        initialization_scale=None,
        extra_passes=0,
        count_symbol="r",
    ),
    Method(
        name="free",
        family="replay",
        default_steps=8,
        minimum_steps=1,
        fixed_steps=False,
        scheduled_start=None,
        step_size_factor=1.25,
        initialization="uniform",
        initialization_scale=None,
        extra_passes=0,
        count_symbol="r",
    ),
    Method(
        name="pgd",
        family="attack_then_update",
        default_steps=7,
        minimum_steps=0,
        fixed_steps=False,
        scheduled_start=0,
        step_size_factor=0.25,
        initialization="uniform",
        initialization_scale=None,
        extra_passes=1,
        count_symbol="K",
    ),
    # TRADES and MART start their attacks next to x, at x + 0.001 N(0, 1), as in
    # their reference code and the authors' M+TRADES / M+MART.
    Method(
        name="trades",
        family="attack_then_update",
        default_steps=10,
        minimum_steps=0,
        fixed_steps=False,
        scheduled_start=0,
        step_size_factor=0.25,
        initialization="normal",
        initialization_scale=0.001,
        extra_passes=2,
        count_symbol="K",
        training_loss="trades",
    ),
    Method(
        name="mart",
        family="attack_then_update",
        default_steps=10,
        minimum_steps=0,
        fixed_steps=False,
        scheduled_start=0,
        step_size_factor=0.25,
        initialization="normal",
        initialization_scale=0.001,
        extra_passes=2,
        count_symbol="K",
        training_loss="mart",
    ),
    Method(
        name="fgsm_rs",
        family="single_step",
        default_steps=1,
        minimum_steps=1,
        fixed_steps=True,
        scheduled_start=None,
        step_size_factor=1.25,
        initialization="uniform",
        initialization_scale=None,
        extra_passes=1,
        count_symbol="K",
    ),
    Method(
        name="none",
        family="clean",
        default_steps=0,
        minimum_steps=0,
        fixed_steps=True,
        scheduled_start=None,
        step_size_factor=1.25,
        initialization="uniform",
        initialization_scale=None,
        extra_passes=1,
        count_symbol="K",
    ),
)
METHODS = {row.name: row for row in _ROWS}
NAMES = tuple(METHODS)
SCHEDULED = tuple(name for name, row in METHODS.items() if row.schedulable)
REPLAYING = tuple(name for name, row in METHODS.items() if row.replays)
# Methods with a K-step attack loop (the ones an early stop applies to).
ATTACKING = tuple(name for name, row in METHODS.items() if row.family == "attack_then_update")


def get(name):
    """The `Method` row of a method name.

    Args:
        name: One of `NAMES`.

    Returns:
        The `Method`.

    Raises:
        ValueError: For an unknown name.
    """
    return METHODS[checks.check_choice(name, NAMES, "method")]


def check_scheduler(scheduler, method):
    """Refuses a scheduler for a method whose count is fixed.

    Args:
        scheduler: A scheduler name ("none" always passes) or callback class name.
        method: The method name.

    Raises:
        ValueError: If `method` is not in `SCHEDULED`.
    """
    if scheduler != "none" and not get(method).schedulable:
        raise ValueError(
            f"scheduler {scheduler} changes the iteration count of methods "
            f"{', '.join(SCHEDULED)} only; method {method} has a fixed count (use scheduler none)."
        )


def track_magnitude(track, method):
    """Whether a model of `method` computes the statistic M.

    Args:
        track: True, False, or None for the method's default (`Method.tracks_magnitude`).
        method: The method name.

    Returns:
        The decision as a bool.

    Raises:
        ValueError: If M is asked of clean training, which computes no input gradient.
    """
    if track is None:
        return get(method).tracks_magnitude
    if not isinstance(track, bool):
        raise ValueError(f"track_magnitude must be True, False or None, got {track!r}.")
    if track and get(method).family == "clean":
        raise ValueError("track_magnitude: method none computes no input gradient, so no M.")
    return track


def check_magnitude_scheduler(scheduler, track, method):
    """Refuses the magnitude scheduler for a model that does not compute M.

    Args:
        scheduler: A scheduler name.
        track: The track_magnitude setting (True, False or None).
        method: The method name.

    Raises:
        ValueError: If scheduler is "magnitude" and M is not computed.
    """
    if scheduler == "magnitude" and not track_magnitude(track, method):
        raise ValueError(
            "scheduler magnitude reads the gradient magnitude M, which track_magnitude=False "
            "turns off; keep it on or use another scheduler."
        )


def check_carry(carry_perturbation, method):
    """Refuses a carried perturbation for a method that does not replay minibatches.

    Args:
        carry_perturbation: Whether the perturbation is carried across minibatches.
        method: The method name.

    Raises:
        ValueError: If carrying is asked for a method outside `REPLAYING`.
    """
    if carry_perturbation and not get(method).replays:
        raise ValueError(
            f"carry_perturbation applies to methods {', '.join(REPLAYING)} only, "
            f"not method {method}."
        )


def check_steps_after_misclassified(steps_after_misclassified, method):
    """Validates the early stop of a training attack (tau of `attacks.pgd_loop`).

    Args:
        steps_after_misclassified: None (every example takes every step), or
            the number tau >= 0 of misclassified iterates from which an example
            still steps (0: it stops at its first misclassified iterate).
        method: The method name.

    Returns:
        None, or tau as an int.

    Raises:
        ValueError: If tau is not an integer >= 0, or is given for a method
            without a K-step attack (only the attack-then-update family has one).
    """
    if steps_after_misclassified is None:
        return None
    tau = checks.check_count(steps_after_misclassified, "steps_after_misclassified", 0)
    if get(method).name not in ATTACKING:
        raise ValueError(
            f"steps_after_misclassified applies to methods {', '.join(ATTACKING)} only "
            f"(their K-step attack), not method {method}; leave it None."
        )
    return tau
