"""make_norm / get_norm_layer refuse the running-statistics keys (``momentum``, ``running_stats``,
``track_running_stats=True``) where the module keeps no running statistics, naming the key and the preset:
``track_running_stats=True`` was refused on ``ln``, while ``momentum``/``running_stats`` were accepted and did
nothing."""
import pytest
import torch

from dnlib import make_norm
from dnlib.norms.presets import get_norm_layer


@pytest.mark.parametrize("name, overrides", [
    ("ln", {"momentum": 0.01}), ("ln", {"running_stats": "tf"}), ("dn", {"momentum": 0.5}),
    ("gn", {"running_stats": "tf", "momentum": 0.3}), ("in", {"momentum": None}), ("rms", {"running_stats": "torch"}),
    ("none", {"momentum": 0.1}), ("bn", {"track_running_stats": False, "momentum": 0.2}),
    ("ln", {"track_running_stats": True})])
def test_running_statistics_keys_are_refused_where_there_are_none(name, overrides):
    """Before: make_norm('ln', 32, momentum=0.01) and running_stats='tf' were accepted and did nothing, while
    track_running_stats=True raised (without naming the preset)."""
    key = sorted(k for k in overrides if k != "track_running_stats" or overrides[k])[0]
    with pytest.raises(ValueError, match=rf"{key}: the preset {name!r} \(.*\) keeps no running statistics"):
        make_norm(name, 32, **overrides)
    with pytest.raises(ValueError, match=rf"{key}: the preset {name!r} \(.*\) keeps no running statistics"):
        get_norm_layer(name, overrides)(32)


def test_running_statistics_keys_still_apply_where_there_are_some():
    m = make_norm("bn", 8, momentum=0.3, running_stats="tf")
    assert m.momentum == 0.3 and m.running_stats == "tf" and m.track_running_stats
    assert make_norm("bn-s", 8, momentum=None, track_running_stats=True).momentum is None
    for name in ("ln", "dn", "gn", "in", "none"):   # agreeing with the preset stays accepted
        assert not make_norm(name, 32, track_running_stats=False).track_running_stats
        assert not make_norm(name, 32, track_running_stats=None).track_running_stats
    # a field made to pool the batch by an override keeps running statistics: their keys apply
    m = make_norm("in", 8, sum_axes="batch,space", sup_axes="batch,space", momentum=0.2)
    assert m.track_running_stats and m.momentum == 0.2
    m.train()(torch.randn(4, 8, 3, 3))
    assert m.num_batches_tracked.item() == 1
    # a NormSpec without a batch field: the same rule, naming the spec
    with pytest.raises(ValueError, match=r"momentum: the spec NormSpec\(.*\) keeps no running statistics"):
        make_norm(make_norm("ln", 4).spec, 4, momentum=0.5)
