"""The checks that flag a suspicious robustness evaluation (they flag, they never stop it).

- every attack's accuracy and the robust accuracy are <= the clean accuracy,
  and the robust accuracy is <= every attack's accuracy;
- accuracy does not rise when the same attack gets more steps or restarts
  (by more than 0.5 points when the runs are not a replay of each other);
- every adversarial image is inside the epsilon-ball around x and in [0, 1];
- an example an attack fooled stays fooled when its image is evaluated again
  (a randomized model breaks this, and needs an EOT attack);
- few clean inputs have an input gradient that is exactly zero (masking);
- no iterative attack leaves more examples correct than FGSM (masking);
- Square, which reads only the logits, fools few examples that every
  gradient-based attack left correct (masking);
- with outputs="logits", the outputs do not look like probabilities.

Under the cascade (`report["cascade"]`, the default of `AttackSuite`) each
attack runs only on the examples every earlier attack left robust, and its
accuracy is the robust accuracy after it, so three checks compare differently:

- `monotone_in_budget` can only compare a larger budget listed before a
  smaller one: the smaller one then runs on the larger one's survivors and
  must fool (almost) none of them. A smaller budget listed first is not
  comparable (the larger never sees its victims).
- `stronger_than_fgsm` needs FGSM listed after the iterative attacks: it then
  runs on their survivors and must fool (almost) none of them. Listed first,
  it is skipped.
- `square_adds_little` compares Square with the gradient-based attacks listed
  before it (AutoAttack's order); without the cascade, with all of them.
"""

from deat_tf.attacks import kind_of

# An example counts as masked when its whole input gradient is exactly zero.
# Cross-entropy gradients underflow on confidently classified inputs of a
# healthy network, so more than this fraction of them is flagged.
ZERO_GRADIENT_LIMIT = 0.01
# The margin is scale-free, like the DLR loss that AutoAttack's
# check_zero_gradients watches; AutoAttack warns on any zero DLR gradient, so
# any zero margin gradient is flagged.
ZERO_MARGIN_GRADIENT_LIMIT = 0.0
# Accuracy may rise this much with more steps when the step size changes too.
MONOTONE_TOLERANCE = 0.005
# Projections compute x +- epsilon in float32; allow its rounding.
BOUND_TOLERANCE = 1e-6
# Square (or FGSM after the iterative attacks) may fool this fraction of the
# examples, and at least one, that the gradient-based attacks left correct,
# before the evaluation is flagged as masked: such searches differ and find a
# few examples the others miss even on a model without masking.
MASKING_TOLERANCE = 0.005
# Square may fool at most this fraction of all examples beyond the gradient-based
# attacks: AutoAttack's check_square_sr warns when Square lowers the robust
# accuracy by more than 0.2% (alpha=.002), with no minimum count.
SQUARE_TOLERANCE = 0.002


def check_report(report, attack_specs):
    """The checks that flag a suspicious evaluation, in `CHECKS` order.

    Args:
        report: The report built by `AttackSuite.run` (without checks).
        attack_specs: The `AttackSpec`s it ran, in order.

    Returns:
        A list of {"name", "passed" (True, False, or None when not applicable),
        "message"}; the logits check only with outputs="logits".
    """
    results = {result["name"]: result for result in report["attacks"]}
    found = [check(report, results, attack_specs) for check in CHECKS]
    return [check for check in found if check is not None]


def robust_at_most_clean(report, results, attack_specs):
    """Every attack's accuracy and the robust accuracy are <= the clean accuracy."""
    clean = report["clean_accuracy"]
    above_clean = [name for name, result in results.items() if result["accuracy"] > clean]
    if report["robust_accuracy"] > clean:
        above_clean.append("robust")
    return _check(
        "robust_at_most_clean",
        not above_clean,
        f"accuracy above the clean {100 * clean:.2f}% under: {', '.join(above_clean)}"
        if above_clean
        else "every attack's accuracy and the robust accuracy are <= clean",
    )


def robust_at_most_each_attack(report, results, attack_specs):
    """The robust accuracy is <= every attack's accuracy."""
    above_robust = [
        name for name, result in results.items() if result["accuracy"] < report["robust_accuracy"]
    ]
    return _check(
        "robust_at_most_each_attack",
        not above_robust,
        f"robust accuracy {100 * report['robust_accuracy']:.2f}% above the accuracy under: "
        + ", ".join(above_robust)
        if above_robust
        else "the robust accuracy is <= every attack's accuracy",
    )


def reevaluation_agrees(report, results, attack_specs):
    """An example an attack fooled stays fooled when its image is evaluated again.

    If not, the model's outputs change from call to call (a randomized
    defence), and a single attack pass overstates robustness.
    """
    mismatched = {
        name: result["reevaluation_mismatches"]
        for name, result in results.items()
        if result.get("reevaluation_mismatches")
    }
    return _check(
        "reevaluation_agrees",
        not mismatched,
        "examples fooled during the attack are classified correctly when evaluated again ("
        + ", ".join(f"{name}: {count}" for name, count in mismatched.items())
        + "): the model is randomized or non-deterministic; use an EOT attack"
        if mismatched
        else "every example an attack fooled stays fooled when evaluated again",
    )


def within_bounds(report, results, attack_specs):
    """Every adversarial image is inside the epsilon-ball around x and in [0, 1]."""
    outside = [name for name, result in results.items() if not result["within_bounds"]]
    return _check(
        "within_bounds",
        not outside,
        "adversarial images outside the epsilon-ball or [0, 1] under: " + ", ".join(outside)
        if outside
        else f"every adversarial image is within epsilon={report['epsilon']:.6g} and [0, 1]",
    )


def zero_gradients(report, results, attack_specs):
    """Few clean inputs have an input gradient that is exactly zero (masking)."""
    zero = report["zero_gradient_fraction"]
    too_many = zero["ce"] > ZERO_GRADIENT_LIMIT or zero["margin"] > ZERO_MARGIN_GRADIENT_LIMIT
    return _check(
        "zero_gradients",
        not too_many,
        f"{100 * zero['ce']:.2f}% (cross-entropy) and {100 * zero['margin']:.2f}% (margin) of "
        f"clean inputs have an all-zero input gradient"
        + (
            f" (limits {100 * ZERO_GRADIENT_LIMIT:g}% and "
            f"{100 * ZERO_MARGIN_GRADIENT_LIMIT:g}%): a sign of gradient masking"
            if too_many
            else ""
        ),
    )


def stronger_than_fgsm(report, results, attack_specs):
    """No iterative attack leaves more examples correct than FGSM (masking)."""
    single_steps = [
        result
        for result in results.values()
        if kind_of(result["method"]).gradient_based and not kind_of(result["method"]).iterative
    ]
    if not single_steps:
        return _check("stronger_than_fgsm", None, "skipped: fgsm was not run")
    examples = report.get("examples", 0)
    if report.get("cascade", False):
        allowed = max(1, int(MASKING_TOLERANCE * examples))
        return _later_attack_check("stronger_than_fgsm", single_steps[0], examples, allowed, True)
    fgsm_accuracy = single_steps[0]["accuracy"]
    weaker_than_fgsm = [
        f"{name} {100 * result['accuracy']:.2f}%"
        for name, result in results.items()
        if kind_of(result["method"]).iterative and result["accuracy"] > fgsm_accuracy
    ]
    return _check(
        "stronger_than_fgsm",
        not weaker_than_fgsm,
        "iterative attacks leave more examples correct than FGSM "
        f"({100 * fgsm_accuracy:.2f}%): "
        + ", ".join(weaker_than_fgsm)
        + ": a sign of gradient masking"
        if weaker_than_fgsm
        else "every iterative attack is at least as strong as FGSM",
    )


def square_adds_little(report, results, attack_specs):
    """Square (logits only) fools few examples that the gradient-based attacks left correct."""
    searches = [
        result
        for result in results.values()
        if not kind_of(result["method"]).gradient_based and not kind_of(result["method"]).is_clean
    ]
    if not searches:
        return _check("square_adds_little", None, "skipped: square was not run")
    examples = report.get("examples", 0)
    allowed = SQUARE_TOLERANCE * examples
    cascade = report.get("cascade", False)
    flagged = [
        _later_attack_check("square_adds_little", result, examples, allowed, cascade)
        for result in searches
    ]
    failed = [check for check in flagged if check["passed"] is False]
    ran = [check for check in flagged if check["passed"] is not None]
    return failed[0] if failed else ran[0] if ran else flagged[0]


def outputs_are_logits(report, results, attack_specs):
    """With outputs="logits", the outputs do not look like probabilities (None otherwise)."""
    if report["outputs"] != "logits":
        return None
    looks = report["outputs_look_like_probabilities"]
    return _check(
        "outputs_are_logits",
        not looks,
        "every output row is in [0, 1] and sums to 1: the model seems to output "
        "probabilities; evaluate with outputs=probabilities"
        if looks
        else "outputs are not probabilities",
    )


def monotone_in_budget(report, results, attack_specs):
    """More steps or restarts of the same attack must not leave more examples robust."""
    cascade = report.get("cascade", False)
    examples = report.get("examples", 0)
    order = [spec.name for spec in attack_specs]
    rising, compared, not_comparable = [], 0, 0
    for weaker in attack_specs:
        for stronger in attack_specs:
            if (
                weaker is stronger
                or not weaker.kind.takes_count
                or weaker.budget_key() != stronger.budget_key()
                or stronger.steps < weaker.steps
                or stronger.restarts < weaker.restarts
            ):
                continue
            # Same steps (more restarts), or PGD with one step size: the larger
            # budget replays the smaller one's runs (same seeds), so any rise is
            # a bug. Otherwise the runs differ (APGD's checkpoints and Square's
            # schedule scale with the budget): allow sampling noise.
            replays = stronger.steps == weaker.steps or (
                weaker.kind.replays_fewer_steps and stronger.step_size == weaker.step_size
            )
            tolerance = 0.0 if replays else MONOTONE_TOLERANCE
            weaker_result, stronger_result = results[weaker.name], results[stronger.name]
            if not cascade:
                compared += 1
                if stronger_result["accuracy"] > weaker_result["accuracy"] + tolerance:
                    rising.append(
                        f"{stronger.name} {100 * stronger_result['accuracy']:.2f}% > "
                        f"{weaker.name} {100 * weaker_result['accuracy']:.2f}%"
                    )
            elif order.index(stronger.name) < order.index(weaker.name):
                compared += 1
                found = weaker_result.get("fooled_first", 0)
                if found > tolerance * examples:
                    rising.append(
                        f"{weaker.name} fooled {found} examples that {stronger.name} "
                        "(listed before it) left robust"
                    )
            else:
                not_comparable += 1
    if rising:
        message = "accuracy rose with more steps or restarts: " + "; ".join(rising)
    elif compared:
        message = f"no accuracy rise with more steps or restarts ({compared} pairs compared)"
    elif not_comparable:
        message = (
            "skipped: under the cascade a smaller budget listed before a larger one cannot be "
            "compared with it (list the larger first, or run without the cascade)"
        )
    else:
        message = "skipped: no two attacks differ only in budget (see accuracy_by_run for restarts)"
    return _check("monotone_in_budget", not rising if compared else None, message)


def _later_attack_check(name, result, examples, allowed, cascade):
    """Flags FGSM or Square fooling examples that the gradient-based attacks left correct."""
    compared = result.get("compared_with", [])
    attack = result["name"]
    if not compared:
        return _check(
            name,
            None,
            f"skipped: {attack} ran before every gradient-based attack under the cascade "
            "(list it after them, or run without the cascade)"
            if cascade
            else f"skipped: no gradient-based attack to compare {attack} with",
        )
    found = result.get("fooled_beyond_gradient_attacks", 0)
    share = 100 * found / max(examples, 1)
    return _check(
        name,
        found <= allowed,
        f"{attack} fooled {found} examples ({share:.2f}%) that {', '.join(compared)} left "
        f"correct (tolerance {allowed:g}): a sign of gradient masking"
        if found > allowed
        else f"{attack} fooled {found} examples that {', '.join(compared)} left correct "
        f"(tolerance {allowed:g})",
    )


CHECKS = (
    robust_at_most_clean,
    robust_at_most_each_attack,
    monotone_in_budget,
    reevaluation_agrees,
    within_bounds,
    zero_gradients,
    stronger_than_fgsm,
    square_adds_little,
    outputs_are_logits,
)


def _check(name, passed, message):
    return {"name": name, "passed": passed, "message": message}
