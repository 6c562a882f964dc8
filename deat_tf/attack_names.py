"""Attack names of an evaluation ("clean,fgsm,pgd20,cw20,apgd-ce,apgd-t") and what they resolve to.

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
"""

import dataclasses
import re

from deat_tf import apgd, attacks, checks, fab, square

ATTACK_NAMES_HELP = (
    "clean, fgsm, pgdN, cwN (N steps, e.g. pgd20; pgd50x10 for 10 restarts), "
    "apgd-ce, apgd-dlr, apgd-t, fab-t, fab (optionally with steps and restarts, e.g. apgd-ce50, "
    "apgd-t100x2), square (5000 queries; square1000x2), autoattack, autoattack-plus"
)
APGD_DEFAULT_STEPS = 100
FAB_DEFAULT_STEPS = fab.FAB_STEPS
SQUARE_DEFAULT_QUERIES = square.SQUARE_QUERIES
# AutoAttack's lists (Croce and Hein 2020), in its order: each attack runs on
# the examples the earlier ones left robust (see `deat_tf.evaluation`).
ATTACK_GROUPS = {
    "autoattack": "apgd-ce,apgd-t,fab-t,square",
    "autoattack-plus": "apgd-ce100x5,apgd-dlr100x5,fab100x5,square,apgd-t,fab-t",
}
# Attacks that follow the input gradient (the masking checks compare Square and FGSM with them).
ITERATIVE_METHODS = ("pgd", "apgd", "apgd-t", "fab", "fab-t")
GRADIENT_METHODS = ("fgsm",) + ITERATIVE_METHODS


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack of an evaluation, resolved from its name.

    Attributes:
        name: The name as given, e.g. "pgd20".
        method: "clean", "fgsm", "pgd", "apgd", "apgd-t", "fab", "fab-t" or "square".
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

    def targets(self, num_classes):
        """Targets per example of apgd-t and fab-t (capped at classes - 1), else 0."""
        if self.method in ("apgd-t", "fab-t"):
            return min(self.target_classes, num_classes - 1)
        return 0

    def runs(self, num_classes):
        """Number of attack runs per example (restarts, times targets for apgd-t and fab-t)."""
        if self.method in ("clean", "fgsm"):
            return 1
        return self.restarts * max(self.targets(num_classes), 1)

    def gradient_evaluations(self, num_classes):
        """Input-gradient evaluations per attacked example.

        Untargeted FAB takes the gradient of every logit at each iteration;
        Square takes none (see `queries`).
        """
        if self.method in ("clean", "square"):
            return 0
        if self.method == "fgsm":
            return 1
        if self.method == "fab":
            return self.steps * self.runs(num_classes) * num_classes
        return self.steps * self.runs(num_classes)

    def queries(self):
        """Square's query budget per attacked example: (steps + 1) per restart.

        The stripes and `steps` proposals; an example stops at its first success.
        """
        return (self.steps + 1) * self.restarts if self.method == "square" else 0

    def budget_key(self):
        """Attacks with equal keys differ only in steps, restarts and step size."""
        return (self.method, self.loss)

    def with_default_step(self, epsilon):
        """This spec with its step size filled in: epsilon for FGSM, 2.5 epsilon / steps for PGD."""
        if self.step_size is not None or self.method not in ("fgsm", "pgd"):
            return self
        step = epsilon if self.method == "fgsm" else attacks.default_step_size(epsilon, self.steps)
        return dataclasses.replace(self, step_size=step)


_ATTACK_PATTERN = re.compile(
    r"^(?P<base>clean|fgsm|pgd|cw|apgd-ce|apgd-dlr|apgd-t|fab-t|fab|square)"
    r"(?P<steps>\d+)?(?:x(?P<restarts>\d+))?$"
)


def parse_attacks(names, epsilon=None, restarts=1, step_size=None):
    """Resolves a comma-separated list of attack names into `AttackSpec`s.

    Args:
        names: E.g. "clean,fgsm,pgd20,cw20,apgd-ce,apgd-t" or "autoattack" (see
            the module docstring); a group name stands for its attacks.
        epsilon: L-infinity radius; if given, fills the default step sizes
            (epsilon for FGSM, 2.5 * epsilon / steps for PGD). Without it they
            stay None and `AttackSuite` fills them.
        restarts: Restarts of pgdN/cwN names without an explicit xR suffix.
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
    if "clean" not in seen:
        specs.insert(0, AttackSpec("clean", "clean"))
    else:
        specs.sort(key=lambda spec: spec.method != "clean")
    if epsilon is not None:
        specs = [spec.with_default_step(checks.check_epsilon(epsilon)) for spec in specs]
    return specs


def _spec_from_match(name, match, default_restarts, step_size):
    base, steps, restarts = match.group("base"), match.group("steps"), match.group("restarts")
    if base in ("clean", "fgsm"):
        if steps or restarts:
            raise ValueError(f"attacks: {base!r} takes no step count; got {name!r}.")
        if base == "clean":
            return AttackSpec(name, "clean")
        return AttackSpec(name, "fgsm", "ce", 1, 1, None)
    if base in ("pgd", "cw"):
        if not steps:
            raise ValueError(f"attacks: {base!r} needs a step count, e.g. {base}20; got {name!r}.")
        steps = int(steps)
        runs = int(restarts) if restarts else default_restarts
        if steps < 1 or runs < 1:
            raise ValueError(f"attacks: steps and restarts of {name!r} must be >= 1.")
        return AttackSpec(name, "pgd", "ce" if base == "pgd" else "cw", steps, runs, step_size)
    default_steps = {"square": SQUARE_DEFAULT_QUERIES, "fab": FAB_DEFAULT_STEPS}
    default_steps["fab-t"] = FAB_DEFAULT_STEPS
    steps = int(steps) if steps else default_steps.get(base, APGD_DEFAULT_STEPS)
    runs = int(restarts) if restarts else 1
    if steps < 1 or runs < 1:
        raise ValueError(f"attacks: steps and restarts of {name!r} must be >= 1.")
    if base == "square":
        return AttackSpec(name, "square", "margin", steps, runs, None)
    if base == "fab-t":
        return AttackSpec(name, "fab-t", "", steps, runs, None, fab.FAB_TARGET_CLASSES)
    if base == "fab":
        return AttackSpec(name, "fab", "", steps, runs, None)
    if base == "apgd-t":
        return AttackSpec(name, "apgd-t", "dlr", steps, runs, None, apgd.APGD_TARGET_CLASSES)
    return AttackSpec(name, "apgd", base.split("-")[1], steps, runs, None)
