"""deat_tf: efficient adversarial training for Keras and TensorFlow.

DEAT (Dynamic Efficient Adversarial Training) with M+ acceleration, plus the
baselines FREE-m, PGD-AT, TRADES, MART and FGSM-RS, as a Keras model with a
custom train step (`AdversarialModel`) and callbacks that schedule the attack
iteration count.
"""

# Importing learning_rates and optimizers registers the recipes' schedules and
# PyTorchSGD for loading .keras files.
from deat_tf import attacks, datasets, evaluation, learning_rates, models, optimizers
from deat_tf.adversarial_model import METHODS, AdversarialModel
from deat_tf.learning_rates import MinibatchSchedule
from deat_tf.optimizers import PyTorchSGD
from deat_tf.schedulers import (
    AccuracyScheduler,
    IterationScheduler,
    MagnitudeScheduler,
    PeriodicScheduler,
)

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "AccuracyScheduler",
    "AdversarialModel",
    "IterationScheduler",
    "MagnitudeScheduler",
    "MinibatchSchedule",
    "PeriodicScheduler",
    "PyTorchSGD",
    "attacks",
    "datasets",
    "evaluation",
    "learning_rates",
    "models",
    "optimizers",
]
