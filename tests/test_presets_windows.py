"""make_norm / get_norm_layer refuse ``window=``/``weights=`` that no field of the preset would take, naming the
preset, the key and what to do: an integer window was refused on presets without windows, while a mapping gave the
plain preset (``make_norm("ln", 32, window={"space": 5})``: same spec, same output)."""
import pytest

from dnlib import make_norm
from dnlib.norms.presets import get_norm_layer


@pytest.mark.parametrize("name, key, value", [
    ("ln", "window", {"space": 5}), ("bn", "window", {"space": 5}), ("in", "window", {"channel": 3}),
    ("ln", "weights", {"space": 2.0}), ("rms", "weights", {"space": 2.0}), ("ln", "window", 5),
    ("bn", "weights", 2.0)])
def test_window_and_weights_on_a_preset_without_windows_are_refused(name, key, value):
    """Before: make_norm('ln', 32, window={'space': 5}) gave the plain ln (same spec, same output)."""
    with pytest.raises(ValueError, match=rf"{key}: .*preset {name!r} .*has no window.*sum_window=") as err:
        make_norm(name, 32, **{key: value})
    assert "dn" in str(err.value)   # what to use instead
    with pytest.raises(ValueError, match=rf"{key}: .*preset {name!r}"):
        get_norm_layer(name, {key: value})(16)


def test_window_and_weights_still_apply_where_there_are_windows():
    assert dict(make_norm("dn", 8, window={"space": 5}).spec.sum_window) == {"space": 5}
    assert dict(make_norm("dn-ms", 8, window={"space": 5}).spec.sum_window) == {"space": 5}   # one field windowed
    assert dict(make_norm("lrn", 8, window=3).spec.sup_window) == {"channel": 3}
    assert dict(make_norm("dn", 8, weights={"space": 1.0}).spec.sup_weights) == {"space": 1.0}
    # windows added to a windowless preset by name, then weights (and window) for them
    m = make_norm("ln", 8, sum_window={"space": 5}, sup_window={"space": 5}, weights={"space": 2.0})
    assert dict(m.spec.sum_weights) == dict(m.spec.sup_weights) == {"space": 2.0}
    m = make_norm("dn", 8, sum_window={"space": 5}, window={"space": 3})   # sum_window wins where it is given
    assert dict(m.spec.sum_window) == {"space": 5} and dict(m.spec.sup_window) == {"space": 3}
    with pytest.raises(ValueError, match=r"window: .*preset 'bn' .*has no window"):   # window= would set no field
        make_norm("bn", 8, sum_window={"space": 3}, window={"space": 5})
    assert make_norm("ln", 8, window=None).spec == make_norm("ln", 8).spec
    assert make_norm("dn", 8, window={}).spec.sum_window == ()
