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
"""

import dataclasses
import re

from deat_tf import apgd, attacks, checks

ATTACK_NAMES_HELP = (
    "clean, fgsm, pgdN, cwN (N steps, e.g. pgd20; pgd50x10 for 10 restarts), "
    "apgd-ce, apgd-dlr, apgd-t (optionally with steps and restarts, e.g. apgd-ce50, apgd-t100x2)"
)
APGD_DEFAULT_STEPS = 100


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack of an evaluation, resolved from its name.

    Attributes:
        name: The name as given, e.g. "pgd20".
        method: "clean", "fgsm", "pgd", "apgd" or "apgd-t".
        loss: "ce", "cw" or "dlr" ("" for clean).
        steps: Gradient evaluations per run.
        restarts: Random restarts (per target for apgd-t).
        step_size: Step of fgsm/pgd (None: the default for the suite's
            epsilon); None for APGD, whose step adapts.
        target_classes: Targets of apgd-t (capped at classes - 1 when run).
    """

    name: str
    method: str
    loss: str = ""
    steps: int = 0
    restarts: int = 1
    step_size: float | None = None
    target_classes: int = 0

    def runs(self, num_classes):
        """Number of attack runs per example (restarts, times targets for apgd-t)."""
        if self.method == "apgd-t":
            return self.restarts * min(self.target_classes, num_classes - 1)
        return self.restarts if self.method in ("pgd", "apgd") else 1

    def gradient_evaluations(self, num_classes):
        """Input-gradient evaluations per example."""
        if self.method == "clean":
            return 0
        if self.method == "fgsm":
            return 1
        return self.steps * self.runs(num_classes)

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
    r"^(?P<base>clean|fgsm|pgd|cw|apgd-ce|apgd-dlr|apgd-t)(?P<steps>\d+)?(?:x(?P<restarts>\d+))?$"
)


def parse_attacks(names, epsilon=None, restarts=1, step_size=None):
    """Resolves a comma-separated list of attack names into `AttackSpec`s.

    Args:
        names: E.g. "clean,fgsm,pgd20,cw20,apgd-ce,apgd-t" (see the module docstring).
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
        names = [name.strip() for name in names.split(",")]
    names = [name for name in names if name]
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
    steps = int(steps) if steps else APGD_DEFAULT_STEPS
    runs = int(restarts) if restarts else 1
    if steps < 1 or runs < 1:
        raise ValueError(f"attacks: steps and restarts of {name!r} must be >= 1.")
    if base == "apgd-t":
        return AttackSpec(name, "apgd-t", "dlr", steps, runs, None, apgd.APGD_TARGET_CLASSES)
    return AttackSpec(name, "apgd", base.split("-")[1], steps, runs, None)
