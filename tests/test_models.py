import json
from pathlib import Path

import pytest
import torch

from gridrun import GridrunError
from gridrun.models import count_params, create_model, is_zoo, list_models, model_family

GOLDEN = Path(__file__).resolve().parent.parent / "gridrun" / "models" / "golden_params.json"
# The studies' own counts (torchsummary of EVA6-Group-15/MNIST_99_4's nets; khanrc/mnist's TF
# graphs counted layer by layer): every study net is rebuilt exactly.
STUDY = {"vanilla": 9186, "dropout": 9178, "gap_transition_fc": 9320, "gap_transition": 9210,
         "two_maxpool": 6290, "one_maxpool": 6290, "vgg_allconv": 5964362, "vgg_inception": 2436810,
         "resnet20": 272090, "resnet32": 466522, "wide_resnet14": 2776138, "inception_v4_light": 1243562}


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.randn(4, 1, 28, 28)
    out = model(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_golden_param_counts_are_exact():
    golden = json.loads(GOLDEN.read_text())
    counts = {n: count_params(n) for n in list_models() if is_zoo(n)}  # the zoo, not a test's or a user's nets
    changed = {n: (golden.get(n), c) for n, c in counts.items() if golden.get(n) != c}
    assert not changed and set(golden) == set(counts), \
        f"param counts changed {changed}: if on purpose, regenerate with `python -m gridrun.models.golden`"


@pytest.mark.parametrize("name,study", STUDY.items())
def test_study_nets_have_the_studys_exact_counts(name, study):
    assert count_params(name) == study
    assert count_params(name, dropout=0.05) == study if name in ("two_maxpool", "one_maxpool") else True


def test_own_net_under_8k():
    assert count_params("tinynet_7k") < 8000


def test_registry_errors_and_listing():
    with pytest.raises(GridrunError, match="valid models are .*vanilla"):
        create_model("no_such_net")
    with pytest.raises(GridrunError, match="takes no argument 'width'"):
        create_model("vanilla", width=3)
    assert "one_maxpool" in list_models("*maxpool") and "vanilla" not in list_models("*maxpool")
    assert model_family("vanilla") == "tiny"


def test_resnet_depth_must_be_6n_plus_2():
    assert count_params("resnet", depth=32) == count_params("resnet32")
    for bad in (21, 8, 116):
        with pytest.raises(GridrunError, match=r"depth .* is not 6n\+2 .*valid depths: 20, 26, 32"):
            create_model("resnet", depth=bad)
    with pytest.raises(GridrunError, match="6n\\+4"):
        create_model("wide_resnet", depth=14)


def test_every_family_of_the_zoo_is_registered():
    fams = {model_family(n) for n in list_models()}
    assert {"tiny", "vgg", "resnet", "preact_resnet", "wide_resnet", "inception"} <= fams
    for name in ("vgg", "vgg_allconv", "vgg_inception", "resnet20", "resnet32", "preact_resnet20",
                 "wide_resnet14", "inception_v4", "inception_v4_light"):
        assert name in list_models()


def test_dropout_masks_are_a_function_of_seed_step_and_element():
    from gridrun.models._layers import Dropout, dropout_steps, load_dropout_steps, seed_dropout

    d = Dropout(0.3)
    seed_dropout(d, 7)
    x = torch.ones(64, 16, 8, 8)
    a, b = d(x), d(x)
    assert not torch.equal(a, b) and dropout_steps(d) == [2]  # a new mask every step
    load_dropout_steps(d, [0])
    assert torch.equal(d(x), a)                              # the same step gives the same mask
    assert abs(float((a == 0).float().mean()) - 0.3) < 0.01  # the rate holds
    assert torch.allclose(a[a != 0], torch.full_like(a[a != 0], 1 / 0.7))
    d.eval()
    assert torch.equal(d(x), x)
    z = Dropout(0.0)
    assert torch.equal(z(x), x) and not z.active
    c = Dropout(0.5, channelwise=True)
    out = c(x)
    assert all(len(set(out[i, j].flatten().tolist())) == 1 for i in range(4) for j in range(16))


def test_dropout_rate_never_changes_a_models_structure():
    for name in ("tinynet_7k", "two_maxpool", "vgg_allconv", "wide_resnet14", "wrn_16_4", "inception_v4_light"):
        a = create_model(name, dropout=0.0).state_dict()
        b = create_model(name, dropout=0.2).state_dict()
        assert a.keys() == b.keys(), name


def test_tinynet_arch_strings():
    assert count_params("tinynet") == count_params("tinynet_7k")
    assert count_params("tinynet", arch="C8:1 M T4 C8 O G") < 2000
    # S: depthwise 3x3 (9 weights per input channel) then 1x1 (8 -> 16), + BN's 2 x 16
    assert count_params("tinynet", arch="C8:1 S16 O G") - count_params("tinynet", arch="C8:1 O G") \
        == 9 * 8 + 8 * 16 + 2 * 16 + (16 - 8) * 10
    net = create_model("tinynet", arch="C8:0 C16:0 M T12 S24 S24 M S32 S32 S40 O G")
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    for bad in ("C8 X G", "C8 O", "C0 O G", "Cx O G", "", "C8 S O G", "C8 S0 O G"):
        with pytest.raises(GridrunError, match="arch"):
            create_model("tinynet", arch=bad)


def test_the_zoo_ships_no_test_nets():
    """chaos_net (a net that fails on cue) is the tests' (tests/gridrun_hooks.py), registered only
    where $GRIDRUN_HOOKS names that file, never in a user's zoo (issue 37)."""
    import os
    import subprocess
    import sys

    from gridrun.models import list_models

    assert os.environ.get("GRIDRUN_HOOKS") and "chaos_net" in list_models()  # here, the tests' hooks named
    code = "from gridrun.models import list_models; print('chaos_net' in list_models())"
    env = {k: v for k, v in os.environ.items() if k != "GRIDRUN_HOOKS"}
    shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert shown.stdout.strip() == "False", shown.stderr
