import math

import numpy as np
import pytest

from edgegen.measure.metrics import cosine_similarity, fidelity, psnr_db, worst_fidelity


def test_psnr_of_identical_tensors_is_infinite():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert psnr_db(x, x) == math.inf


def test_psnr_matches_the_closed_form():
    reference = np.array([2.0, -2.0, 1.0, 0.0])
    test = reference + np.array([0.1, -0.1, 0.1, -0.1])
    # peak 2, mse 0.01 -> 10 log10(4 / 0.01) = 26.02 dB
    assert psnr_db(reference, test) == pytest.approx(10 * math.log10(400), abs=1e-9)


def test_cosine_and_max_error():
    a = np.array([1.0, 0.0])
    b = np.array([0.0, 3.0])
    assert cosine_similarity(a, b) == pytest.approx(0.0)
    assert cosine_similarity(a, 2 * a) == pytest.approx(1.0)
    assert fidelity(a, b).max_abs_error == pytest.approx(3.0)


def test_worst_fidelity_takes_the_weakest_output():
    ref = {"x": np.ones(4), "y": np.ones(4)}
    out = {"x": np.ones(4), "y": np.ones(4) * 1.5}
    worst = worst_fidelity(ref, out)
    assert worst.psnr_db == pytest.approx(psnr_db(ref["y"], out["y"]))
    assert worst.max_abs_error == pytest.approx(0.5)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape mismatch"):
        fidelity(np.ones(3), np.ones(4))


def test_every_budget_flag_of_compare_is_in_the_metric_registry_and_back():
    import inspect

    from edgegen.cli.compare import compare_command
    from edgegen.measure.metric_registry import BUDGETS

    options = [name for name in inspect.signature(compare_command).parameters if name.startswith(("min_", "max_"))]
    assert sorted(options) == sorted(BUDGETS)
    assert BUDGETS["max_fid_gap"].budget_flag == "--max-fid-gap" and not BUDGETS["max_fid_gap"].higher_is_better
    assert BUDGETS["min_psnr"].budget_flag == "--min-psnr" and BUDGETS["min_psnr"].higher_is_better


def test_budgets_read_the_registry():
    from edgegen.errors import EdgegenError
    from edgegen.measure.pipeline_fidelity import Budgets
    from tests.test_sweep import _result

    student = _result("s", 1.0, 1.0, 1, 20.0, fid=3.0)
    checks = Budgets(min_teacher_psnr=25.0, max_fid_gap=5.0, min_ssim=None).check(student)
    assert [(c.name, c.value, c.passed) for c in checks] == [("min_teacher_psnr", 20.0, False), ("max_fid_gap", 3.0, True)]
    # An export budget does not apply to an eager case that has no export fidelity.
    assert Budgets(min_psnr=40.0).check(student.model_copy(update={"runtime": "eager"})) == []
    with pytest.raises(EdgegenError, match="--max-kid-gap needs --feature-extractor"):
        Budgets(max_kid_gap=0.1).refuse_unmeasurable(None, None, None)
    with pytest.raises(TypeError, match="unknown budget 'min_speed'"):
        Budgets(min_speed=1.0)
