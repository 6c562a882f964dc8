"""L-infinity attacks on image classifiers, as plain TensorFlow functions.

Every attack here works on images in [0, 1] and on any Keras model (called with
`training=False`) or any callable that maps a batch of images to logits:

    x_adv = attacks.pgd(model, x, y, epsilon=8 / 255, step_size=2 / 255, steps=10)
    x_adv = attacks.fgsm(model, x, y, epsilon=8 / 255)
    x_adv = attacks.apgd(model, x, y, epsilon=8 / 255, steps=100)             # APGD-CE
    x_adv = attacks.apgd_targeted(model, x, y, epsilon=8 / 255, steps=100)    # APGD-T
    x_adv = attacks.fab_targeted(model, x, y, epsilon=8 / 255)                # FAB-T
    x_adv = attacks.square(model, x, y, epsilon=8 / 255)                      # Square

The package, module by module:

- `common`: the parts every attack is built from. A start:
  `initial_perturbation` draws a random start (uniform, normal, Bernoulli or
  zero); `batch_starts` and `example_starts` give the start of each restart,
  seeded per batch or per example. `project` clips an iterate into the
  epsilon-ball around x and into [0, 1]. `strongest_attack`, the one
  composer: it runs a loop from the start of every restart (and towards every
  target of a targeted attack) and keeps, per example, the strongest result.
- one module per family, each a loop plus the public functions built on it:
  `pgd_attacks` (FGSM, PGD, CW; `pgd_loop` returns the last iterate, as
  adversarial training needs, in a `tf.while_loop` whose step count may be a
  variable; `pgd_search` the strongest iterate it saw), `apgd_attack`
  (APGD-CE/DLR/T), `fab_attack` (FAB-T and FAB), `square_attack` (Square).
- `kinds`: one `AttackKind` row per attack name of an evaluation (`pgd20`,
  `apgd-t`, ...): its pattern, default steps, loss, targets, whether it is
  gradient-based and XLA-able, its cost, and the `run` function that attacks
  a batch. Parsing, help texts, cost accounting and the evaluation's checks
  read the rows. Adding an attack is one family module plus one row.

The objectives (cross-entropy, the CW margin, DLR, ...) live in
`deat_tf.losses`; the ones attacks use are reachable here too.

Conventions shared by every attack:

- Per-example losses are summed, not averaged, before the gradient: the sign step
  does not care, and the gradient of each example does not shrink with the batch.
- The iterate is the adversarial image itself, clipped to the ball and then to
  [0, 1] after every step, so `x_adv` is inside both sets by construction.
- The result is wrapped in `tf.stop_gradient`: it is data, not part of a graph.
- Keras models are called with `training=False`: BatchNorm uses its moving
  statistics and updates nothing, dropout is off. That is the standard for
  evaluation. The training-time attacks of `AdversarialModel` instead use batch
  statistics without updating the moving ones (see `adversarial_model.py`).
- Searches return, per example, the strongest iterate they saw (misclassified
  first, then highest loss) across steps and restarts, so with the same seed
  more restarts can never give a weaker attack (nor, for `pgd`, more steps).
  Targeted attacks count any misclassification as success, as AutoAttack
  does, so their result need not be classified as the target.

When called eagerly, the public attacks run through a cached `tf.function` per
model; inside a `tf.function` they build their ops in place.
"""

from deat_tf.attacks.apgd_attack import (
    APGD_MOMENTUM,
    APGD_RHO,
    APGD_TARGET_CLASSES,
    apgd,
    apgd_checkpoints,
    apgd_loop,
    apgd_start,
    apgd_targeted,
)
from deat_tf.attacks.common import (
    INITIALIZATIONS,
    LOSSES,
    Outcome,
    Strongest,
    as_dtype,
    batch_starts,
    compiled_for,
    example_starts,
    initial_perturbation,
    is_stronger,
    logits_function,
    loss_and_gradient,
    misclassified,
    per_example_perturbation,
    project,
    replica_start,
    select,
    signed_step,
    strongest_attack,
    strongest_over_runs,
)
from deat_tf.attacks.fab_attack import (
    FAB_STEPS,
    FAB_TARGET_CLASSES,
    box_hyperplane_step,
    fab_loop,
    fab_minimal_adversarial,
    fab_targeted,
    fab_untargeted,
)
from deat_tf.attacks.kinds import (
    ATTACK_GROUPS,
    ATTACK_NAMES_HELP,
    KINDS,
    AttackKind,
    AttackSpec,
    kind_of,
    parse_attacks,
)
from deat_tf.attacks.pgd_attacks import (
    default_step_size,
    fgsm,
    pgd,
    pgd_loop,
    pgd_search,
)
from deat_tf.attacks.square_attack import SQUARE_P_INIT, SQUARE_QUERIES, square, square_loop
from deat_tf.losses import (
    APGD_LOSSES,
    attack_objective,
    dlr_loss,
    margin,
    per_example_loss,
    targeted_dlr_loss,
    top_wrong_classes,
)

__all__ = [
    "APGD_LOSSES",
    "APGD_MOMENTUM",
    "APGD_RHO",
    "APGD_TARGET_CLASSES",
    "ATTACK_GROUPS",
    "ATTACK_NAMES_HELP",
    "FAB_STEPS",
    "FAB_TARGET_CLASSES",
    "INITIALIZATIONS",
    "KINDS",
    "LOSSES",
    "SQUARE_P_INIT",
    "SQUARE_QUERIES",
    "AttackKind",
    "AttackSpec",
    "Outcome",
    "Strongest",
    "apgd",
    "apgd_checkpoints",
    "apgd_loop",
    "apgd_start",
    "apgd_targeted",
    "as_dtype",
    "attack_objective",
    "batch_starts",
    "box_hyperplane_step",
    "compiled_for",
    "default_step_size",
    "dlr_loss",
    "example_starts",
    "fab_loop",
    "fab_minimal_adversarial",
    "fab_targeted",
    "fab_untargeted",
    "fgsm",
    "initial_perturbation",
    "is_stronger",
    "kind_of",
    "logits_function",
    "loss_and_gradient",
    "margin",
    "misclassified",
    "parse_attacks",
    "per_example_loss",
    "per_example_perturbation",
    "pgd",
    "pgd_loop",
    "pgd_search",
    "project",
    "replica_start",
    "select",
    "signed_step",
    "square",
    "square_loop",
    "strongest_attack",
    "strongest_over_runs",
    "targeted_dlr_loss",
    "top_wrong_classes",
]
