"""The checks that flag a suspicious robustness evaluation (they flag, they never stop it).

- every attack's accuracy and the robust accuracy are <= the clean accuracy;
- accuracy does not rise when the same attack gets more steps or restarts
  (by more than 0.5 points when the step size differs too);
- every adversarial image is inside the epsilon-ball around x and in [0, 1];
- an example an attack fooled stays fooled when its image is evaluated again
  (a randomized model breaks this, and needs an EOT attack);
- few clean inputs have an input gradient that is exactly zero (masking);
- no iterative attack leaves more examples correct than FGSM (masking);
- with outputs="logits", the outputs do not look like probabilities.
"""

# An example counts as masked when its whole input gradient is exactly zero;
# more than this fraction of such examples is flagged.
ZERO_GRADIENT_LIMIT = 0.01
# Accuracy may rise this much with more steps when the step size changes too.
MONOTONE_TOLERANCE = 0.005
# Projections compute x +- epsilon in float32; allow its rounding.
BOUND_TOLERANCE = 1e-6


def check_report(report, attack_specs):
    """The checks that flag a suspicious evaluation.

    Args:
        report: The report built by `evaluate` (without checks).
        attack_specs: The `AttackSpec`s it ran, in order.

    Returns:
        A list of {"name", "passed" (True, False, or None when not applicable),
        "message"}.
    """
    checks = []
    results = {result["name"]: result for result in report["attacks"]}
    clean = report["clean_accuracy"]

    above_clean = [name for name, result in results.items() if result["accuracy"] > clean]
    if report["robust_accuracy"] > clean:
        above_clean.append("robust")
    checks.append(
        _check(
            "robust_at_most_clean",
            not above_clean,
            f"accuracy above the clean {100 * clean:.2f}% under: {', '.join(above_clean)}"
            if above_clean
            else "every attack's accuracy and the robust accuracy are <= clean",
        )
    )

    rising, compared = [], 0
    for weaker in attack_specs:
        for stronger in attack_specs:
            if (
                weaker is stronger
                or weaker.method in ("clean", "fgsm")
                or weaker.budget_key() != stronger.budget_key()
                or stronger.steps < weaker.steps
                or stronger.restarts < weaker.restarts
            ):
                continue
            compared += 1
            # With one step size the larger budget replays the smaller one's
            # iterates (same seeds), so any rise is a bug; across step sizes
            # allow sampling noise.
            tolerance = 0.0 if stronger.step_size == weaker.step_size else MONOTONE_TOLERANCE
            if results[stronger.name]["accuracy"] > results[weaker.name]["accuracy"] + tolerance:
                rising.append(
                    f"{stronger.name} {100 * results[stronger.name]['accuracy']:.2f}% > "
                    f"{weaker.name} {100 * results[weaker.name]['accuracy']:.2f}%"
                )
    if rising:
        message = "accuracy rose with more steps or restarts: " + "; ".join(rising)
    elif compared:
        message = f"no accuracy rise with more steps or restarts ({compared} pairs compared)"
    else:
        message = "skipped: no two attacks differ only in budget (see accuracy_by_run for restarts)"
    checks.append(_check("monotone_in_budget", not rising if compared else None, message))

    # The attack's own bookkeeping must agree with a fresh evaluation of the
    # images it returns; if not, the model's outputs change from call to call
    # (a randomized defence), and a single attack pass overstates robustness.
    mismatched = {
        name: result["reevaluation_mismatches"]
        for name, result in results.items()
        if result.get("reevaluation_mismatches")
    }
    checks.append(
        _check(
            "reevaluation_agrees",
            not mismatched,
            "examples fooled during the attack are classified correctly when evaluated again ("
            + ", ".join(f"{name}: {count}" for name, count in mismatched.items())
            + "): the model is randomized or non-deterministic; use an EOT attack"
            if mismatched
            else "every example an attack fooled stays fooled when evaluated again",
        )
    )

    outside = [name for name, result in results.items() if not result["within_bounds"]]
    checks.append(
        _check(
            "within_bounds",
            not outside,
            "adversarial images outside the epsilon-ball or [0, 1] under: " + ", ".join(outside)
            if outside
            else f"every adversarial image is within epsilon={report['epsilon']:.6g} and [0, 1]",
        )
    )

    zero = report["zero_gradient_fraction"]
    worst = max(zero.values())
    checks.append(
        _check(
            "zero_gradients",
            worst <= ZERO_GRADIENT_LIMIT,
            f"{100 * zero['ce']:.2f}% (cross-entropy) and {100 * zero['margin']:.2f}% (margin) of "
            f"clean inputs have an all-zero input gradient"
            + (
                f" (limit {100 * ZERO_GRADIENT_LIMIT:.0f}%): a sign of gradient masking"
                if worst > ZERO_GRADIENT_LIMIT
                else ""
            ),
        )
    )

    fgsm = [result for result in results.values() if result["method"] == "fgsm"]
    if fgsm:
        fgsm_accuracy = fgsm[0]["accuracy"]
        weaker_than_fgsm = [
            f"{name} {100 * result['accuracy']:.2f}%"
            for name, result in results.items()
            if result["method"] in ("pgd", "apgd", "apgd-t") and result["accuracy"] > fgsm_accuracy
        ]
        checks.append(
            _check(
                "stronger_than_fgsm",
                not weaker_than_fgsm,
                "iterative attacks leave more examples correct than FGSM "
                f"({100 * fgsm_accuracy:.2f}%): "
                + ", ".join(weaker_than_fgsm)
                + ": a sign of gradient masking"
                if weaker_than_fgsm
                else "every iterative attack is at least as strong as FGSM",
            )
        )
    else:
        checks.append(_check("stronger_than_fgsm", None, "skipped: fgsm was not run"))

    if report["outputs"] == "logits":
        looks = report["outputs_look_like_probabilities"]
        checks.append(
            _check(
                "outputs_are_logits",
                not looks,
                "every output row is in [0, 1] and sums to 1: the model seems to output "
                "probabilities; evaluate with outputs=probabilities"
                if looks
                else "outputs are not probabilities",
            )
        )
    return checks


def _check(name, passed, message):
    return {"name": name, "passed": passed, "message": message}
