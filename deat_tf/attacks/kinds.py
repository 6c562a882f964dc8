"""The attack kinds of an evaluation ("clean,fgsm,pgd20,cw20,apgd-ce,apgd-t"), one row each.

- `clean`: no attack. Always measured, listed or not, because "robust" means
  correct on the clean input and under every attack run.
- `fgsm`: one signed step of size epsilon from x (no random start).
- `pgdN`, `cwN`: N steps of PGD on the cross-entropy or on the CW logit
  margin, from a uniform random start, `restarts` times; `pgd50x10` names
  the restarts explicitly. Step size `step_size`, else 2.5 * epsilon / N.
- `apgd-ce`, `apgd-dlr`, `apgd-t`: Auto-PGD (Croce and Hein 2020) on the
  cross-entropy, on the DLR loss, and targeted DLR towards each of the 9 most
  likely wrong classes. 100 steps and one run (per target) unless named, as in
  `apgd-ce50` or `apgd-t100x2`. No step size: it adapts per example.
- `fab-t`: targeted FAB (Croce and Hein 2020) towards each of the 9 most likely
  wrong classes, 100 iterations and one run per target unless named
  (`fab-t50x2`); `fab`: untargeted FAB (one gradient per class and iteration).
  Success means an adversarial example at L-infinity distance <= epsilon.
- `square`: the Square attack (Andriushchenko et al. 2020), no gradient: the
  stripes, then 5,000 random-search queries of the logits (AutoAttack's
  n_queries); `square1000` names the queries, `square5000x5` the restarts.
- `autoattack`: AutoAttack's standard list, `apgd-ce,apgd-t,fab-t,square`;
  `autoattack-plus`: its "plus" list, `apgd-ce100x5,apgd-dlr100x5,fab100x5,
  square,apgd-t,fab-t` (Square runs once in both, as in AutoAttack's
  `set_version`). Either may stand among other names.

Adding an attack is one family module with a `run` function (the signature of
`AttackKind.run`) plus one row here: parsing, the help texts, the cost in the
report, the step-size default, XLA and the evaluation's sanity checks read the
row, and `tests/test_attack_kinds.py` runs every row through them.
"""

import dataclasses
import re
from collections.abc import Callable

from deat_tf import checks
from deat_tf.attacks import apgd_attack, fab_attack, pgd_attacks, square_attack

# What one unit of an attack's budget costs (`AttackKind.cost`).
COSTS = (
    "none",  # clean: a forward pass
    "one_gradient",  # fgsm: one input gradient per example
    "gradient_per_step",  # one input gradient per step and run
    "gradient_per_class_and_step",  # untargeted FAB: the gradient of every logit per step
    "query_per_step",  # Square: one query of the logits per step, no gradient
)
# How an attack's step size is set (`AttackKind.step_rule`).
STEP_RULES = (
    "none",  # clean, and FAB and Square, whose steps are not a size
    "epsilon",  # fgsm: one step of epsilon unless given
    "pgd",  # 2.5 * epsilon / steps unless given (Madry et al.)
    "adaptive",  # APGD: per example, from 2 * epsilon, halved when progress stalls
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttackKind:
    """One attack kind: how its names read, what it costs, and the function that runs it.

    Attributes:
        name: The base name in an attack list, e.g. "pgd" (names read `name[N][xR]`).
        method: The report's `method`: rows with one method share every field
            below `loss` (a test checks it).
        loss: The objective ("ce", "cw", "dlr", "margin"; "" for clean and FAB).
        summary: One line for help texts.
        takes_count: Whether the name may carry a step count N (and restarts xR).
        default_steps: Steps (Square: queries) when the name has no count; None:
            the count is required (pgd20).
        target_classes: Targets per example (9, capped at classes - 1); 0: untargeted.
        gradient_based: Whether it follows the input gradient (Square reads logits only).
        iterative: Whether it takes many gradient steps; FGSM must not beat these.
        xla: Whether its evaluation step can be XLA-compiled (Square's loop shrinks
            to the examples still robust, which XLA cannot).
        cost: What a unit of its budget costs, one of `COSTS`.
        step_rule: How its step size is set, one of `STEP_RULES`.
        replays_fewer_steps: Whether a run with more steps replays one with fewer
            at the same step size (PGD from the same start), so more steps can
            never leave more examples robust.
        run: `run(spec, logits_fn, x, labels, epsilon, seed, example_indices,
            num_classes)` -> `attacks.Outcome`; None for clean.
    """

    name: str
    method: str
    loss: str
    summary: str
    takes_count: bool = True
    default_steps: int | None = None
    target_classes: int = 0
    gradient_based: bool = True
    iterative: bool = True
    xla: bool = True
    cost: str = "gradient_per_step"
    step_rule: str = "none"
    replays_fewer_steps: bool = False
    run: Callable | None = None

    @property
    def is_clean(self):
        """Whether this is the clean pass (the one row that runs no attack)."""
        return self.run is None

    @property
    def pattern(self):
        """How the name is written in help texts, e.g. "pgdN" or "apgd-ce[N][xR]"."""
        if not self.takes_count:
            return self.name
        return f"{self.name}N[xR]" if self.default_steps is None else f"{self.name}[N][xR]"


_APGD = dict(method="apgd", default_steps=100, step_rule="adaptive", run=apgd_attack.run_apgd)
_FAB = dict(default_steps=fab_attack.FAB_STEPS, run=fab_attack.run_fab)
_PGD = dict(method="pgd", step_rule="pgd", replays_fewer_steps=True, run=pgd_attacks.run_pgd)
KINDS = (
    AttackKind(
        name="clean",
        method="clean",
        loss="",
        summary="no attack (always measured)",
        takes_count=False,
        gradient_based=False,
        iterative=False,
        cost="none",
    ),
    AttackKind(
        name="fgsm",
        method="fgsm",
        loss="ce",
        summary="one signed step of epsilon from x",
        takes_count=False,
        iterative=False,
        cost="one_gradient",
        step_rule="epsilon",
        run=pgd_attacks.run_fgsm,
    ),
    AttackKind(name="pgd", loss="ce", summary="N PGD steps on the cross-entropy", **_PGD),
    AttackKind(name="cw", loss="cw", summary="N PGD steps on the CW logit margin", **_PGD),
    AttackKind(name="apgd-ce", loss="ce", summary="Auto-PGD on the cross-entropy", **_APGD),
    AttackKind(name="apgd-dlr", loss="dlr", summary="Auto-PGD on the DLR loss", **_APGD),
    AttackKind(
        name="apgd-t",
        method="apgd-t",
        loss="dlr",
        summary="targeted Auto-PGD (DLR) towards the 9 most likely wrong classes",
        default_steps=100,
        target_classes=apgd_attack.APGD_TARGET_CLASSES,
        step_rule="adaptive",
        run=apgd_attack.run_apgd,
    ),
    AttackKind(
        name="fab-t",
        method="fab-t",
        loss="",
        summary="targeted FAB towards the 9 most likely wrong classes",
        target_classes=fab_attack.FAB_TARGET_CLASSES,
        **_FAB,
    ),
    AttackKind(
        name="fab",
        method="fab",
        loss="",
        summary="untargeted FAB (a gradient per class and iteration)",
        cost="gradient_per_class_and_step",
        **_FAB,
    ),
    AttackKind(
        name="square",
        method="square",
        loss="margin",
        summary="the Square random search, 5,000 queries of the logits",
        default_steps=square_attack.SQUARE_QUERIES,
        gradient_based=False,
        iterative=False,
        xla=False,
        cost="query_per_step",
        run=square_attack.run_square,
    ),
)
_BY_NAME = {kind.name: kind for kind in KINDS}
_BY_METHOD = {}
for _kind in KINDS:
    _BY_METHOD.setdefault(_kind.method, _kind)

# AutoAttack's lists (Croce and Hein 2020), in its order: each attack runs on
# the examples the earlier ones left robust (see `deat_tf.evaluation`).
ATTACK_GROUPS = {
    "autoattack": "apgd-ce,apgd-t,fab-t,square",
    "autoattack-plus": "apgd-ce100x5,apgd-dlr100x5,fab100x5,square,apgd-t,fab-t",
}
ATTACK_NAMES_HELP = (
    ", ".join(kind.pattern for kind in KINDS)
    + " (N steps, Square's N queries; xR restarts, e.g. pgd20, pgd50x10, apgd-t100x2, "
    + "square1000x2), "
    + ", ".join(f"{group} ({members})" for group, members in ATTACK_GROUPS.items())
)
_ATTACK_PATTERN = re.compile(
    "^(?P<base>"
    + "|".join(re.escape(name) for name in sorted(_BY_NAME, key=len, reverse=True))
    + r")(?P<steps>\d+)?(?:x(?P<restarts>\d+))?$"
)


def kind_of(method):
    """The `AttackKind` of a spec's or a report's `method` (rows of one method agree on behaviour).

    Raises:
        ValueError: For a method no row has.
    """
    try:
        return _BY_METHOD[method]
    except KeyError:
        raise ValueError(
            f"attack method {method!r} is unknown; known: {', '.join(_BY_METHOD)}."
        ) from None


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack of an evaluation, resolved from its name.

    Attributes:
        name: The name as given, e.g. "pgd20".
        method: The `method` of its `AttackKind`: "clean", "fgsm", "pgd",
            "apgd", "apgd-t", "fab", "fab-t" or "square".
        loss: "ce", "cw", "dlr" or "margin" (Square); "" for clean and FAB.
        steps: Iterations per run; Square's random-search queries per run
            (after the stripes).
        restarts: Restarts (per target for apgd-t and fab-t).
        step_size: Step of fgsm/pgd (None: the default for the suite's
            epsilon); None for the other attacks, whose steps adapt.
        target_classes: Targets of apgd-t and fab-t (capped at classes - 1 when run).
    """

    name: str
    method: str
    loss: str = ""
    steps: int = 0
    restarts: int = 1
    step_size: float | None = None
    target_classes: int = 0

    @property
    def kind(self):
        """Its `AttackKind` (by method)."""
        return kind_of(self.method)

    def targets(self, num_classes):
        """Targets per example of apgd-t and fab-t (capped at classes - 1), else 0."""
        if self.target_classes:
            return min(self.target_classes, num_classes - 1)
        return 0

    def runs(self, num_classes):
        """Number of attack runs per example (restarts, times targets for apgd-t and fab-t)."""
        if not self.kind.takes_count:
            return 1
        return self.restarts * max(self.targets(num_classes), 1)

    def gradient_evaluations(self, num_classes):
        """Input-gradient evaluations per attacked example (the kind's `cost`).

        Untargeted FAB takes the gradient of every logit at each iteration;
        Square takes none (see `queries`).
        """
        cost = self.kind.cost
        if cost in ("none", "query_per_step"):
            return 0
        if cost == "one_gradient":
            return 1
        per_step = num_classes if cost == "gradient_per_class_and_step" else 1
        return self.steps * self.runs(num_classes) * per_step

    def queries(self):
        """Square's query budget per attacked example: (steps + 1) per restart.

        The stripes and `steps` proposals; an example stops at its first success.
        """
        return (self.steps + 1) * self.restarts if self.kind.cost == "query_per_step" else 0

    def budget_key(self):
        """Attacks with equal keys differ only in steps, restarts and step size."""
        return (self.method, self.loss)

    def with_default_step(self, epsilon):
        """This spec with its step size filled in: epsilon for FGSM, 2.5 epsilon / steps for PGD."""
        rule = self.kind.step_rule
        if self.step_size is not None or rule not in ("epsilon", "pgd"):
            return self
        step = epsilon if rule == "epsilon" else pgd_attacks.default_step_size(epsilon, self.steps)
        return dataclasses.replace(self, step_size=step)


CLEAN = AttackSpec("clean", "clean")


def parse_attacks(names, epsilon=None, restarts=1, step_size=None):
    """Resolves a comma-separated list of attack names into `AttackSpec`s.

    Args:
        names: E.g. "clean,fgsm,pgd20,cw20,apgd-ce,apgd-t" or "autoattack" (see
            the module docstring); a group name stands for its attacks.
        epsilon: L-infinity radius; if given, fills the default step sizes
            (epsilon for FGSM, 2.5 * epsilon / steps for PGD). Without it they
            stay None and `AttackSuite` fills them.
        restarts: Restarts of names whose kind has no default count (pgdN, cwN)
            and no explicit xR suffix.
        step_size: PGD/CW step size; None for the default rule.

    Returns:
        A list of `AttackSpec`, "clean" first (added when not listed).

    Raises:
        ValueError: For an unknown or repeated name, or a bad count.
    """
    restarts = checks.check_count(restarts, "restarts", 1)
    if step_size is not None:
        step_size = checks.check_positive(step_size, "step_size")
    if isinstance(names, str):
        names = names.split(",")
    names = [name.strip() for name in names]
    names = [
        member
        for name in names
        for member in (
            ATTACK_GROUPS[name.lower()].split(",") if name.lower() in ATTACK_GROUPS else [name]
        )
        if member
    ]
    if not names:
        raise ValueError(f"attacks is empty; allowed names: {ATTACK_NAMES_HELP}.")
    specs = []
    for name in names:
        match = _ATTACK_PATTERN.match(name.lower())
        if match is None:
            raise ValueError(f"attacks: unknown attack {name!r}; allowed: {ATTACK_NAMES_HELP}.")
        specs.append(_spec_from_match(name, match, restarts, step_size))
    seen = set()
    for spec in specs:
        if spec.name in seen:
            raise ValueError(f"attacks lists {spec.name!r} twice.")
        seen.add(spec.name)
    specs = with_clean_first(specs)
    if epsilon is not None:
        specs = [spec.with_default_step(checks.check_epsilon(epsilon)) for spec in specs]
    return specs


def with_clean_first(specs):
    """The specs, the clean pass first (added when missing): it decides what the cascade attacks."""
    specs = list(specs)
    if not any(spec.kind.is_clean for spec in specs):
        specs.insert(0, CLEAN)
    return sorted(specs, key=lambda spec: not spec.kind.is_clean)


def _spec_from_match(name, match, default_restarts, step_size):
    kind = _BY_NAME[match.group("base")]
    steps, restarts = match.group("steps"), match.group("restarts")
    if not kind.takes_count:
        if steps or restarts:
            raise ValueError(f"attacks: {kind.name!r} takes no step count; got {name!r}.")
        return AttackSpec(name, kind.method, kind.loss, 1 if kind.run else 0, 1, None)
    if steps is None and kind.default_steps is None:
        raise ValueError(
            f"attacks: {kind.name!r} needs a step count, e.g. {kind.name}20; got {name!r}."
        )
    steps = int(steps) if steps else kind.default_steps
    if restarts:
        runs = int(restarts)
    else:
        runs = default_restarts if kind.default_steps is None else 1
    if steps < 1 or runs < 1:
        raise ValueError(f"attacks: steps and restarts of {name!r} must be >= 1.")
    user_step = step_size if kind.step_rule == "pgd" else None
    return AttackSpec(name, kind.method, kind.loss, steps, runs, user_step, kind.target_classes)
