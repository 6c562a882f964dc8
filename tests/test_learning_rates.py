"""The recipes' learning-rate schedules, keyed on minibatches."""

import numpy as np
import pytest

from deat_tf import learning_rates


def test_multistep_schedule_decays_at_fractions_of_all_minibatches():
    schedule = learning_rates.make_learning_rate("multistep", 0.05, 10, 20, boundaries=(0.5, 0.8))
    values = [float(schedule(step)) for step in (0, 99, 100, 159, 160, 199)]
    assert values == pytest.approx([0.05, 0.05, 0.005, 0.005, 0.0005, 0.0005])


def test_piecewise_schedule_decays_at_epochs():
    schedule = learning_rates.make_learning_rate("piecewise", 0.1, 23, 10, boundaries=(10, 17))
    values = [float(schedule(step)) for step in (99, 100, 169, 170)]
    assert values == pytest.approx([0.1, 0.01, 0.01, 0.001])


def test_cyclic_schedule_rises_to_the_peak_and_returns_to_zero():
    schedule = learning_rates.make_learning_rate("cyclic", 0.2, 10, 10, peak_fraction=0.4)
    values = np.array([float(schedule(step)) for step in range(100)])
    assert values.argmax() in (38, 39) and values.max() == pytest.approx(0.2, rel=0.05)
    assert values[0] > 0 and values[-1] == pytest.approx(0.0, abs=1e-6)
    restored = learning_rates.TriangularSchedule.from_config(schedule.get_config())
    assert float(restored(50)) == pytest.approx(float(schedule(50)))


def test_boundaries_outside_the_run_are_rejected():
    with pytest.raises(ValueError, match="piecewise lr_boundaries are epochs"):
        learning_rates.make_learning_rate("piecewise", 0.1, 5, 10, boundaries=(10,))
    with pytest.raises(ValueError, match="fractions"):
        learning_rates.make_learning_rate("multistep", 0.1, 5, 10, boundaries=(50,))
