"""Robust evaluation: run a list of attacks over a dataset and report what survives.

    suite = evaluation.AttackSuite("autoattack", epsilon=0.3)   # or "clean,fgsm,pgd20,apgd-t"
    data = evaluation.load_data("mnist_sample", n_examples=1000)
    report = suite.run(network, data)          # or evaluation.evaluate(network, data, names, 0.3)
    print(evaluation.format_table(report))
    evaluation.write_report(report, "report.json")

`bin/evaluate` (`deat_tf.cli`) adds presets and flags around these calls, and
`bin/train` evaluates its final networks with the same code.

Attack names (comma-separated, each at most once; `autoattack` and
`autoattack-plus` stand for AutoAttack's lists) are the rows of
`deat_tf.attacks.kinds`; `parse_attacks` and `AttackSpec` are reachable here too.

The package, module by module: `suite` (`AttackSuite`: the clean pass, one
pass per attack, the report, as three steps), `inputs` (data and networks to
evaluate, and the checks that they fit), `report` (the text table and the
atomic JSON writer) and `checks` (the sanity checks, one function per check, as
AutoAttack's `checks.py`).

The cascade (`cascade=True`, the default; `--nocascade` in `bin/evaluate`):
the clean pass runs on every example, then each attack, in list order, only
on the examples still robust, i.e. correct on the clean input and under every
earlier attack, as AutoAttack does. The robust accuracy is the same as with
every attack on every example (each example's result does not depend on the
others), at a fraction of the cost. What the numbers mean then:

- `accuracy` of an attack is the robust accuracy after it (correct on the
  clean input and under it and every attack above it), so it can only fall
  down the list and the last one is the robust accuracy. Without the cascade
  it is the accuracy under that attack alone, on every example.
- `attacked` is the number of examples it ran on; `gradient_evaluations` (and
  Square's `queries`) count what it spent on them; `fooled_first` is the
  number of examples it was the first in the list to fool (with or without
  the cascade).
- `accuracy_by_run`, `reevaluation_mismatches`, `max_perturbation` and
  `within_bounds` are over the examples it attacked.
- The sanity checks that compare attacks (`sanity_checks`) compare a
  later attack with the survivors of the earlier ones.

`run(..., return_images=True)` also returns the adversarial images: per
example the image of the first attack that fooled it (AutoAttack's x_adv), the
clean image where none did.

What the report holds (`AttackSuite.run` returns it, `write_report` writes it
as JSON): per attack the accuracy, the accuracy after each run (restart, or
target x restart for apgd-t and fab-t), the time, the examples attacked, the
input-gradient evaluations and queries spent and the largest perturbation
found; the worst-case robust accuracy; and the checks of
`sanity_checks`, each with `passed` and a message, failures also in
`warnings`.

Design choices:

- The network is called with `training=False` (BatchNorm moving statistics,
  no dropout), as everywhere in `deat_tf.attacks`.
- Accuracy under an attack comes from running the network again on the images
  the attack returns, not from the attack's own bookkeeping.
- Each example's random draws come from the stateless seed (s + run, example
  index), where s is the attack's own seed (`attack_seed`: the suite's seed
  moved to a stream keyed on the attack's name), so every attack draws its
  own starts, as AutoAttack does, and APGD-T a new one per target: the starts
  of PGD (`attacks.example_starts`), APGD (`apgd_attack.example_starts`), FAB's
  restarts (`fab_attack.restart_starts`) and Square's windows
  (`square_attack.restart_seeds`). Every attack loss is per example, so results do
  not depend on the batch size, the batch order, the number of replicas or
  which other examples the cascade attacks: a `MirroredStrategy` run gives the
  single-device numbers.
- Under a strategy each attack is one `strategy.run` per global batch; the
  per-example results of the replicas are gathered on the host by index. The
  model's variables must be created under the strategy's scope
  (`load_classifier(path, strategy)` does; `check_model_strategy`).
"""

from deat_tf.attacks import ATTACK_NAMES_HELP, AttackSpec, parse_attacks
from deat_tf.evaluation.checks import check_report as sanity_checks
from deat_tf.evaluation.inputs import (
    EvaluationData,
    check_model_outputs,
    check_model_strategy,
    from_arrays,
    load_classifier,
    load_data,
    model_functions,
)
from deat_tf.evaluation.report import format_table, write_report
from deat_tf.evaluation.suite import (
    DEFAULT_ATTACKS,
    DEFAULT_BATCH_SIZE,
    OUTPUTS,
    AttackSuite,
    attack_seed,
    evaluate,
)

__all__ = [
    "ATTACK_NAMES_HELP",
    "DEFAULT_ATTACKS",
    "DEFAULT_BATCH_SIZE",
    "OUTPUTS",
    "AttackSpec",
    "AttackSuite",
    "EvaluationData",
    "attack_seed",
    "check_model_outputs",
    "check_model_strategy",
    "evaluate",
    "format_table",
    "from_arrays",
    "load_classifier",
    "load_data",
    "model_functions",
    "parse_attacks",
    "sanity_checks",
    "write_report",
]
