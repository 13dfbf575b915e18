"""dnlib.convert_norms: a torch network with torch normalizers becomes the same network built with ``norm=``."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dnlib
from dnlib.norms.norm import DivisiveNorm
from dnlib.norms.presets import get_norm_layer


class SmallNet(nn.Module):
    """A small conv net written against torch only; ``norm_layer(C)`` builds each normalizer (nn.BatchNorm2d, or
    a dnlib preset through get_norm_layer: how dnlib's models take ``norm=``)."""

    def __init__(self, norm_layer=nn.BatchNorm2d, fc_norm=nn.BatchNorm1d):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = norm_layer(8)
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), norm_layer(16), nn.ReLU())
        self.fc = nn.Linear(16, 12)
        self.bn_fc = fc_norm(12)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = self.block(F.relu(self.bn1(self.conv1(x))))
        return self.head(F.relu(self.bn_fc(self.fc(x.mean((2, 3))))))


def _twin(src: nn.Module, preset, **kw) -> SmallNet:
    """SmallNet built with ``norm=preset`` directly, its conv/linear weights copied from ``src``."""
    layer = get_norm_layer(preset, kw)
    net = SmallNet(layer, layer).double()
    lin = {k: v for k, v in src.state_dict().items() if not k.startswith(("bn1", "block.1", "bn_fc"))}
    missing = net.load_state_dict(lin, strict=False)
    assert not missing.unexpected_keys
    return net


@pytest.mark.parametrize("preset,kw", [("dn-s", {}), ("dn", dict(window=5, sigma=0.5, eps=0.0)), ("ln", {}),
                                       ("bn-s", {}), ("gn", dict(groups=4))])
def test_converted_equals_built_with_norm(preset, kw):
    torch.manual_seed(0)
    src = SmallNet().double()
    twin = _twin(src, preset, **kw)
    conv = dnlib.convert_norms(src, preset, **kw)
    assert conv is src
    assert all(isinstance(m, DivisiveNorm) for m in (conv.bn1, conv.block[1], conv.bn_fc))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in conv.modules())
    assert sum(p.numel() for p in conv.parameters()) == sum(p.numel() for p in twin.parameters())
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    for mode in (True, False):
        conv.train(mode), twin.train(mode)
        torch.testing.assert_close(conv(x), twin(x), rtol=0, atol=1e-12)
    # one training step of each from the same state: the same update
    for net in (conv, twin):
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        F.cross_entropy(net(x), torch.arange(6) % 5).backward()
        opt.step()
    torch.testing.assert_close(conv(x), twin(x), rtol=0, atol=1e-10)


def _trained_bn(steps=3) -> tuple:
    torch.manual_seed(1)
    net = SmallNet().double()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    x = torch.randn(10, 3, 8, 8, dtype=torch.float64)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(x), torch.arange(10) % 5).backward()
        opt.step()
    return net, x


def test_trained_bn_to_bn_keeps_affine_and_running_stats_and_outputs():
    net, x = _trained_bn()
    assert not torch.allclose(net.bn1.weight, torch.ones(8, dtype=torch.float64))   # training moved gamma
    torch_bn = copy.deepcopy(net)
    ref = {k: v.clone() for k, v in net.state_dict().items()}
    conv = dnlib.convert_norms(net, "bn")
    got = conv.state_dict()
    for k, v in ref.items():   # same names (weight, bias, running_mean, running_var, num_batches_tracked), same values
        assert torch.equal(got[k], v), k
    assert conv.bn1.training
    for mode in (False, True, False):   # eval, a training forward (updates the running stats of both), eval
        conv.train(mode), torch_bn.train(mode)
        torch.testing.assert_close(conv(x), torch_bn(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(conv.bn1.running_var, torch_bn.bn1.running_var, rtol=0, atol=1e-14)


def test_trained_affine_copied_into_a_preset_with_affine():
    net, _ = _trained_bn()
    gamma, beta = net.block[1].weight.detach().clone(), net.block[1].bias.detach().clone()
    conv = dnlib.convert_norms(net, "dn-s", affine=True)
    assert torch.equal(conv.block[1].weight, gamma) and torch.equal(conv.block[1].bias, beta)
    assert conv.block[1].running_mean is None   # DN keeps no running statistics


def test_trained_affine_dropped_without_affine_warns():
    net, _ = _trained_bn()
    with pytest.warns(UserWarning, match=r"bn1\.weight .*pass affine=True"):
        dnlib.convert_norms(net, "dn-s")
    assert net.bn1.weight is None
    fresh = SmallNet()
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # gamma = 1, beta = 0: nothing is lost, nothing to say
        dnlib.convert_norms(fresh, "dn-s")


def test_converted_model_trains_a_step():
    torch.manual_seed(0)
    net = dnlib.convert_norms(SmallNet(), "dn-s", alpha=0.01)
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = F.cross_entropy(net(x), y) + dnlib.sparse_penalty(net)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_types_select_subclasses_syncbatchnorm_left_or_converted():
    class MyBN(nn.BatchNorm2d):
        pass

    def model():
        return nn.Sequential(nn.Conv2d(3, 4, 1), nn.SyncBatchNorm(4), MyBN(4), nn.InstanceNorm2d(4, affine=True),
                             nn.GroupNorm(2, 4), nn.BatchNorm3d(4), nn.LayerNorm([4, 5, 5]))
    m = dnlib.convert_norms(model(), "dn-s")      # default types: BN1d/2d, GN, LN, IN2d
    kinds = [type(x).__name__ for x in m]
    assert kinds == ["Conv2d", "SyncBatchNorm", "DivisiveNorm", "DivisiveNorm", "DivisiveNorm", "BatchNorm3d",
                     "DivisiveNorm"]
    m = dnlib.convert_norms(model(), "ln", types=nn.SyncBatchNorm)
    kinds = [type(x).__name__ for x in m]
    assert kinds == ["Conv2d", "DivisiveNorm", "MyBN", "InstanceNorm2d", "GroupNorm", "BatchNorm3d", "LayerNorm"]
    m = dnlib.convert_norms(model(), "dn", types=(nn.modules.batchnorm.BatchNorm2d, nn.SyncBatchNorm))
    assert [type(x).__name__ for x in m][1:3] == ["DivisiveNorm", "DivisiveNorm"]
    # and the converted (N, C, 5, 5) network runs
    assert m[:3](torch.randn(2, 3, 5, 5)).shape == (2, 4, 5, 5)


def test_model_that_is_itself_a_normalizer_and_shared_modules():
    bn = nn.BatchNorm2d(4)
    new = dnlib.convert_norms(bn, "ln")
    assert isinstance(new, DivisiveNorm) and new.num_features == 4
    shared = nn.BatchNorm2d(4)
    seq = nn.Sequential(shared, nn.ReLU(), shared)
    dnlib.convert_norms(seq, "dn-s")
    assert seq[0] is seq[2] and isinstance(seq[0], DivisiveNorm)


def test_layernorm_affine_copied_only_when_per_channel():
    ln1 = nn.LayerNorm(6)             # (N, C) inputs: elementwise = per channel
    with torch.no_grad():
        ln1.weight.uniform_(0.5, 2.0), ln1.bias.uniform_(-1, 1)
    ref = nn.Sequential(ln1)
    x = torch.randn(5, 6)
    want = ref(x)
    new = dnlib.convert_norms(ref, "ln")
    torch.testing.assert_close(new(x), want, rtol=1e-5, atol=1e-6)
    ln3 = nn.LayerNorm([4, 3, 3])     # elementwise over positions: not a per-channel affine
    with torch.no_grad():
        ln3.weight.normal_()
    with pytest.warns(UserWarning, match="elementwise affine"):
        conv = dnlib.convert_norms(nn.Sequential(ln3), "ln")
    assert torch.equal(conv[0].weight, torch.ones(4))
    ln3c = nn.LayerNorm([4, 3, 3])    # constant over the positions: it is per channel
    with torch.no_grad():
        ln3c.weight.copy_(torch.arange(1.0, 5.0).view(4, 1, 1).expand(4, 3, 3))
    x4 = torch.randn(2, 4, 3, 3)
    want = ln3c(x4)
    conv = dnlib.convert_norms(nn.Sequential(ln3c), "ln")
    torch.testing.assert_close(conv(x4), want, rtol=1e-5, atol=1e-5)


def test_keeps_device_dtype_mode_and_requires_grad():
    net = SmallNet().to(torch.float64).eval()
    net.bn1.weight.requires_grad_(False)
    dnlib.convert_norms(net, "bn")
    assert net.bn1.weight.dtype == torch.float64 and net.bn1.running_mean.dtype == torch.float64
    assert not net.bn1.training and not net.block[1].training
    assert net.bn1.weight.requires_grad is False and net.block[1].weight.requires_grad is True
    assert net.bn1.weight.device == net.conv1.weight.device


def test_bad_arguments_name_the_value_and_the_allowed_ones():
    net = SmallNet()
    with pytest.raises(ValueError, match=r"to: unknown normalizer 'batchnorm'.*known presets are \[.*'dn-s'"):
        dnlib.convert_norms(net, "batchnorm")
    with pytest.raises(ValueError, match=r"types: <class 'torch.nn.modules.conv.Conv2d'> is not a normalizer.*"
                                         r"allowed are \[.*'BatchNorm2d'"):
        dnlib.convert_norms(net, "dn-s", types=(nn.Conv2d,))
    with pytest.raises(ValueError, match=r"types: .*BatchNorm3d.*allowed are"):
        dnlib.convert_norms(net, "dn-s", types=nn.BatchNorm3d)
    with pytest.raises(ValueError, match=r"types: expected a normalizer class or a non-empty tuple"):
        dnlib.convert_norms(net, "dn-s", types=())
    with pytest.raises(ValueError, match=r"types: 'bn' is not"):
        dnlib.convert_norms(net, "dn-s", types=("bn",))
    with pytest.raises(ValueError, match=r"norm_kwargs: unknown key 'sigmaa'"):
        dnlib.convert_norms(net, "dn-s", sigmaa=0.5)
    with pytest.raises(ValueError, match=r"copy_affine: expected True or False"):
        dnlib.convert_norms(net, "dn-s", copy_affine="yes")
    with pytest.raises(ValueError, match=r"model: expected an nn.Module"):
        dnlib.convert_norms("net", "dn-s")
    # a preset that cannot be built for a layer: the layer is named and nothing has changed
    with pytest.raises(ValueError, match=r"bn1 \(BatchNorm2d\(8\)\): cannot build 'gn'.*groups=32"):
        dnlib.convert_norms(net, "gn")
    assert isinstance(net.bn1, nn.BatchNorm2d) and isinstance(net.bn_fc, nn.BatchNorm1d)


def test_a_dnlib_model_converted_between_presets_equals_building_it_with_norm():
    from dnlib.models import resnet20
    torch.manual_seed(0)
    net = resnet20(10, "bn").double()
    dnlib.convert_norms(net, "dn", types=DivisiveNorm, sigma=0.5, alpha=0.005)
    direct = resnet20(10, "dn", norm_kwargs=dict(sigma=0.5, alpha=0.005)).double()
    direct.load_state_dict(net.state_dict())                 # the same names: the same architecture
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(net(x), direct(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(dnlib.sparse_penalty(net), dnlib.sparse_penalty(direct), rtol=0, atol=1e-14)
    if "gdn" in dnlib.PRESETS:                                # a learned-field preset: built the same way
        dnlib.convert_norms(net, "gdn", types=DivisiveNorm)
        assert type(net.norm1) is type(dnlib.make_norm("gdn", 16)) and net(x).shape == (2, 10)


def test_instance_norm_running_stats_are_not_taken_for_batch_statistics():
    inorm = nn.InstanceNorm2d(3, track_running_stats=True)
    inorm(torch.randn(4, 3, 5, 5) * 3 + 1)                 # its running stats: means of per-example statistics
    with pytest.warns(UserWarning, match=r"0\.running_mean, running_var \(InstanceNorm's"):
        bn = dnlib.convert_norms(nn.Sequential(inorm), "bn")[0]
    assert torch.equal(bn.running_mean, torch.zeros(3)) and torch.equal(bn.running_var, torch.ones(3))
    src = nn.BatchNorm2d(3)
    src(torch.randn(4, 3, 5, 5) * 3 + 1)
    bn = dnlib.convert_norms(nn.Sequential(src), "bn")[0]
    assert torch.equal(bn.running_var, src.running_var) and bn.num_batches_tracked == 1


# --- convert_norms says what it did (issue 22 item 3, item 7; issue 23 item 3) --------------------------------------

def _warned(fn):
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        out = fn()
    return out, [str(w.message) for w in got if issubclass(w.category, UserWarning)
                 and "convert_norms" in str(w.message)]


def test_report_lists_what_was_copied_and_dropped_per_layer():
    net, _ = _trained_bn()
    conv, rep = dnlib.convert_norms(net, "bn", report=True)
    assert conv is net and isinstance(rep, dnlib.norms.convert.ConversionReport)
    assert [r.path for r in rep] == ["bn1", "block.1", "bn_fc"] and not rep.skipped and not rep.warnings
    row = rep.rows[0]
    assert row.source.startswith("BatchNorm2d(8,") and row.target == "bn(8)"
    assert row.copied == ("weight", "bias", "running_mean", "running_var", "num_batches_tracked") and not row.dropped
    assert rep.found == {"BatchNorm2d": 2, "BatchNorm1d": 1}
    net, _ = _trained_bn()
    with pytest.warns(UserWarning, match=r"bn1\.weight"):
        _, rep = dnlib.convert_norms(net, "dn-s", report=True)
    assert rep.rows[0].copied == ()
    assert rep.rows[0].dropped == ("weight (the preset has no per-channel affine (pass affine=True to keep it))",
                                   "bias (the preset has no per-channel affine (pass affine=True to keep it))",
                                   "running_mean, running_var (the new layer keeps no running statistics)")
    text = str(rep)
    assert text.startswith("convert_norms to dn-s: 3 converted, 0 left as is") and "\n  block.1: BatchNorm2d(16" in text
    assert "warning: convert_norms: not copied" in text
    # eps/momentum are carried over: the target names them (before: dropped, the report alone saying so)
    _, rep = dnlib.convert_norms(nn.Sequential(nn.BatchNorm2d(4, eps=1e-3, momentum=None)), "bn", report=True)
    assert rep.rows[0].target == "bn(4, eps=0.001, momentum=None)" and not rep.rows[0].dropped
    # the default call still returns the model alone
    assert isinstance(dnlib.convert_norms(nn.Sequential(nn.BatchNorm2d(4)), "bn"), nn.Sequential)


def test_strict_turns_every_warning_into_an_error_before_anything_changes():
    net, _ = _trained_bn()
    with pytest.raises(ValueError, match=r"strict=True; nothing was changed.*bn1\.weight"):
        dnlib.convert_norms(net, "dn-s", strict=True)
    assert isinstance(net.bn1, nn.BatchNorm2d) and isinstance(net.bn_fc, nn.BatchNorm1d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dnlib.convert_norms(net, "bn", strict=True)          # nothing to say: converted
    with pytest.raises(ValueError, match=r"strict: expected True or False, got 'yes'"):
        dnlib.convert_norms(SmallNet(), "bn", strict="yes")
    with pytest.raises(ValueError, match=r"report: expected True or False, got 1"):
        dnlib.convert_norms(SmallNet(), "bn", report=1)


def test_scripted_model_refused_and_scripted_submodule_named():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)     # torch.jit.script's own deprecation notice
        whole = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)))
        part = torch.jit.script(nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()))
    # before: the scripted model came back unchanged, without a word
    with pytest.raises(ValueError, match=r"model: a TorchScript module .*BatchNorm2d at '1'.*Convert the nn.Module"):
        dnlib.convert_norms(whole, "dn-s")
    net = nn.Sequential(nn.Conv2d(3, 4, 1), part, nn.BatchNorm2d(4))
    (_, rep), said = _warned(lambda: dnlib.convert_norms(net, "dn-s", report=True))
    assert said == ["convert_norms: left as is: '1.0' (inside a TorchScript module: compiled code cannot be replaced "
                    "(convert the nn.Module before torch.jit.script/trace))"]
    assert [(r.path, r.target) for r in rep] == [("1.0", None), ("2", "dn-s(4)")] and isinstance(net[2], DivisiveNorm)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), part, nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match=r"strict=True.*'1\.0' \(inside a TorchScript module"):
        dnlib.convert_norms(net, "dn-s", strict=True)
    assert isinstance(net[2], nn.BatchNorm2d)


def test_uninitialized_lazy_norm_named_not_skipped_silently():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.LazyBatchNorm2d(), nn.LazyInstanceNorm2d(affine=True))
    _, said = _warned(lambda: dnlib.convert_norms(net, "dn-s"))   # before: left as is, no warning
    assert len(said) == 2
    assert said[0].startswith("convert_norms: left as is: '1' (an uninitialized LazyBatchNorm2d: its channel count "
                              "is known only at the first forward, which turns it into torch's BatchNorm2d")
    assert "'2' (an uninitialized LazyInstanceNorm2d" in said[1]
    with pytest.warns(UserWarning, match="left as is"):
        _, rep = dnlib.convert_norms(net, "dn-s", report=True)
    assert [r.path for r in rep.skipped] == ["1", "2"] and not rep.converted
    with pytest.raises(ValueError, match=r"strict=True.*LazyBatchNorm2d"):
        dnlib.convert_norms(net, "dn-s", strict=True)
    net(torch.randn(2, 3, 5, 5))                              # one forward: now torch's BatchNorm2d/InstanceNorm2d
    _, said = _warned(lambda: dnlib.convert_norms(net, "dn-s"))
    assert isinstance(net[1], DivisiveNorm) and isinstance(net[2], DivisiveNorm)
    # torch's LazyInstanceNorm2d keeps running statistics by default (its evaluation used them): that is said
    assert len(said) == 1 and said[0].startswith("convert_norms: not carried over") and "2.running_mean" in said[0]


def test_batchnorm_without_running_stats_converts_to_bn_without_them():
    torch.manual_seed(0)
    src = nn.BatchNorm2d(4, affine=False, track_running_stats=False)
    ref = copy.deepcopy(src)
    new, said = _warned(lambda: dnlib.convert_norms(nn.Sequential(src), "bn"))
    assert said == []
    x = torch.randn(3, 4, 5, 5) * 2 + 1
    for mode in (True, False):   # before: train equal, eval differed by 0.30 (running statistics at 0/1)
        new.train(mode), ref.train(mode)
        torch.testing.assert_close(new(x), ref(x), rtol=0, atol=1e-5)
    assert new[0].track_running_stats is False and new[0].running_mean is None
    _, rep = dnlib.convert_norms(nn.Sequential(copy.deepcopy(ref)), "bn", report=True)
    assert rep.rows[0].target == "bn(4, track_running_stats=False)"
    assert "track_running_stats=False as the source" in rep.rows[0].note
    # asked for running statistics: as asked, and the report says what that changes
    _, rep = dnlib.convert_norms(nn.Sequential(copy.deepcopy(ref)), "bn", track_running_stats=True, report=True)
    assert "the source used batch statistics in evaluation" in rep.rows[0].note


def test_layernorm_over_the_last_dim_of_other_inputs_refused_at_forward():
    torch.manual_seed(0)
    ln = nn.LayerNorm(8)
    ref = copy.deepcopy(ln)
    net = dnlib.convert_norms(nn.Sequential(nn.Identity(), ln), "ln")
    x2 = torch.randn(5, 8)
    torch.testing.assert_close(net(x2), ref(x2), rtol=1e-5, atol=1e-5)   # (N, C): the same layer
    # (N, L, C) with L == C: before, a different output (max |diff| 1.34) without an error
    with pytest.raises(ValueError, match=r"^1 \(converted by dnlib.convert_norms from LayerNorm\(\(8,\).*got input of "
                                         r"shape \(2, 8, 8\).*takes \(N, C\) inputs with C = 8 only.*leave "
                                         r"nn.LayerNorm out of convert_norms\(types=\.\.\.\)"):
        net(torch.randn(2, 8, 8))
    # issue 23's probe: before, "input: has 7 channels at dim 1, but num_features=32", no word of types=
    net = dnlib.convert_norms(nn.Sequential(nn.LayerNorm(32)), "ln")
    with pytest.raises(ValueError, match=r"got input of shape \(2, 7, 32\).*types="):
        net(torch.randn(2, 7, 32))
    # the converted model still pickles (the check is a module-level class) and keeps it
    import pickle
    again = pickle.loads(pickle.dumps(net))
    with pytest.raises(ValueError, match="types="):
        again(torch.randn(2, 7, 32))
    # an (N, C, H, W) input of LayerNorm([C, H, W]) is what it normalizes: accepted; a subclass (its forward decides
    # the layout, e.g. timm's channels-first LayerNorm2d) gets no check
    net = dnlib.convert_norms(nn.Sequential(nn.LayerNorm([4, 3, 3])), "ln")
    assert net(torch.randn(2, 4, 3, 3)).shape == (2, 4, 3, 3)

    class LayerNorm2d(nn.LayerNorm):
        def forward(self, x):
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    net = dnlib.convert_norms(nn.Sequential(LayerNorm2d(4)), "ln2d")
    assert net(torch.randn(2, 4, 3, 3)).shape == (2, 4, 3, 3)


def test_meta_device_model_converts_without_values_and_loads_weights_after():
    trained, x = _trained_bn()
    with torch.device("meta"):
        net = SmallNet().double()
    # before: RuntimeError "Tensor.item() cannot be called on meta tensors", naming neither layer nor device
    _, said = _warned(lambda: dnlib.convert_norms(net, "bn"))
    assert said == [] and all(isinstance(m, DivisiveNorm) for m in (net.bn1, net.block[1], net.bn_fc))
    assert net.bn1.weight.is_meta
    with torch.device("meta"):
        _, rep = dnlib.convert_norms(SmallNet(), "bn", report=True)
    assert len(rep) == 3 and all(r.copied == () and "on the meta device" in r.note for r in rep)
    net.to_empty(device="cpu")
    net.load_state_dict(trained.state_dict())
    for mode in (True, False):
        net.train(mode), trained.train(mode)
        torch.testing.assert_close(net(x), trained(x), rtol=0, atol=1e-12)
    with torch.device("meta"):
        net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.LayerNorm([4, 3, 3]))
    _, rep = dnlib.convert_norms(net, "dn-s", report=True)   # what has no place in the new layer is named
    assert rep.rows[0].dropped[:2] == ("weight (the preset has no per-channel affine)",
                                       "bias (the preset has no per-channel affine)")


def test_no_matching_layer_warns_naming_the_types_and_what_the_model_has():
    net = nn.Sequential(nn.Conv3d(3, 4, 1), nn.BatchNorm3d(4), nn.ReLU(), nn.Conv3d(4, 4, 1), nn.BatchNorm3d(4))
    # before: the model came back unchanged, silently
    out, said = _warned(lambda: dnlib.convert_norms(net, "dn-s"))
    assert out is net and isinstance(net[1], nn.BatchNorm3d)
    assert len(said) == 1
    assert said[0].startswith("convert_norms: no layer of the types it looked for (BatchNorm2d, BatchNorm1d, "
                              "GroupNorm, LayerNorm, InstanceNorm2d) in this Sequential; its normalizers are "
                              "BatchNorm3d (2); BatchNorm3d cannot be converted")
    with pytest.raises(ValueError, match=r"strict=True.*no layer of the types.*BatchNorm3d \(2\)"):
        dnlib.convert_norms(net, "dn-s", strict=True)
    # a convertible normalizer that is not listed: say how to list it
    _, said = _warned(lambda: dnlib.convert_norms(nn.Sequential(nn.SyncBatchNorm(4)), "bn"))
    assert said and "its normalizers are SyncBatchNorm (1); pass types=(nn.SyncBatchNorm,)" in said[0]
    _, said = _warned(lambda: dnlib.convert_norms(nn.Sequential(nn.Linear(2, 2)), "bn"))
    assert said and said[0].endswith("in this Sequential; it has no normalizer layers")


def test_warnings_point_at_the_callers_line():
    """convert_norms' warnings (stacklevel=2) name the caller's file, not dnlib's (pinned for issue 24's split)."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm3d(8))      # nothing to convert: one warning
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        dnlib.convert_norms(net, "dn-s")
    said = [w for w in got if "convert_norms" in str(w.message)]
    assert len(said) == 1 and said[0].filename == __file__


# --- what a converted layer computes: its settings are carried over, or named (issue: convert_norms review) -------

def _close_in(net, conv, x, modes=(True, False), atol=1e-12):
    for mode in modes:
        net.train(mode), conv.train(mode)
        torch.testing.assert_close(conv(x), net(x), rtol=0, atol=atol)


def test_groupnorm_keeps_its_group_count_unless_groups_is_passed():
    torch.manual_seed(0)
    gn8 = nn.GroupNorm(8, 64).double()
    with torch.no_grad():
        gn8.weight.uniform_(0.5, 1.5), gn8.bias.uniform_(-1, 1)
    x = torch.randn(4, 64, 6, 6, dtype=torch.float64)
    ref = copy.deepcopy(gn8)
    # before: gn got the preset's 32 groups and eps 1e-5, output off by 0.90, silently
    (conv, rep), said = _warned(lambda: dnlib.convert_norms(nn.Sequential(copy.deepcopy(gn8)), "gn", report=True,
                                                            alpha=0.005))
    assert said == [] and conv[0].spec.groups == 8 and conv[0].alpha == 0.005
    assert rep.rows[0].target == "gn(64, groups=8)" and not rep.rows[0].dropped
    _close_in(ref, conv[0], x)
    one = dnlib.convert_norms(nn.Sequential(nn.GroupNorm(1, 64).double()), "gn")[0]   # an explicit group count
    assert one.spec.groups == 1
    _close_in(nn.GroupNorm(1, 64).double(), one, x)
    # the caller's groups= wins, and the report says the layer's value was replaced
    conv, rep = dnlib.convert_norms(nn.Sequential(copy.deepcopy(gn8)), "gn", groups=4, report=True)
    assert conv[0].spec.groups == 4 and "groups=4 as asked (the source's 8 replaced)" in rep.rows[0].note
    # into the other presets with a group count (EvoNorm-S0, bcn)
    assert dnlib.convert_norms(nn.Sequential(copy.deepcopy(gn8)), "evonorm-s0")[0].groups == 8
    assert dnlib.convert_norms(nn.Sequential(copy.deepcopy(gn8)), "bcn")[0].groups == 8


@pytest.mark.parametrize("to", ["gn", "evonorm-s0", "bcn"])
def test_a_groupnorm_whose_channels_the_presets_32_groups_do_not_divide_converts_with_its_own(to):
    """Before: GroupNorm(8, 16) could not be converted: the new layer was first built with the preset's 32 groups
    (to learn its settings), which 16 channels refuse, and the error named groups=32 and "GroupNorm(16)"."""
    torch.manual_seed(0)
    gn = nn.GroupNorm(8, 16).double()
    (conv, rep), said = _warned(lambda: dnlib.convert_norms(nn.Sequential(copy.deepcopy(gn)), to, report=True))
    layer = conv[0]
    assert getattr(layer, "groups", None) == 8 or layer.spec.groups == 8
    assert rep.rows[0].target.endswith("groups=8)"), rep.rows[0].target
    if to == "gn":
        _close_in(gn, layer, torch.randn(4, 16, 5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^0 \(GroupNorm\(4, 12\)\): cannot build 'gn' for it: .*groups=5"):
        dnlib.convert_norms(nn.Sequential(nn.GroupNorm(4, 12).double()), "gn", groups=5)   # the caller's: refused


def _trained_bn_layer(**kw) -> nn.BatchNorm2d:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(8, **kw).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2), bn.bias.uniform_(-1, 1)
    for _ in range(5):
        bn(torch.randn(16, 8, 6, 6, dtype=torch.float64) * 3)
    with torch.no_grad():
        bn.running_var.mul_(0.001)   # small variances: eps matters (as in a late layer)
    return bn


@pytest.mark.parametrize("to", ["bn", "frozen-bn", "brn"])
def test_a_trained_bn_keeps_its_eps_and_momentum(to):
    bn = _trained_bn_layer(eps=1e-3, momentum=0.01)
    x = torch.randn(4, 8, 6, 6, dtype=torch.float64)
    # before: eps 1e-5 (the preset's): evaluation output off by 19.5 (bn), 26.5 (frozen-bn), 27.8 (brn), silently
    (conv, rep), said = _warned(lambda: dnlib.convert_norms(nn.Sequential(copy.deepcopy(bn)), to, report=True))
    assert said == [] and conv[0].spec.eps == 1e-3 and not rep.rows[0].dropped
    bn.eval(), conv.eval()
    torch.testing.assert_close(conv(x), bn(x), rtol=0, atol=1e-6)
    if to == "frozen-bn":   # no momentum there (nothing is updated): not named, not advised
        row = rep.rows[0]
        assert "momentum" not in f"{row.dropped} {row.note}" and row.target == "frozen-bn(8, eps=0.001)"
        gn = nn.GroupNorm(8, 64, eps=1e-6).double()   # a GroupNorm's eps (and its group count) as well
        (conv, rep), said = _warned(lambda: dnlib.convert_norms(nn.Sequential(copy.deepcopy(gn)), "gn", report=True))
        assert said == [] and rep.rows[0].target == "gn(64, eps=1e-06, groups=8)" and not rep.rows[0].dropped
        x = torch.randn(4, 64, 6, 6, dtype=torch.float64)
        _close_in(gn, conv[0], x)
        return
    assert conv[0].momentum == 0.01 and rep.rows[0].target == f"{to}(8, eps=0.001, momentum=0.01)"
    bn.train(), conv.train()
    if to == "bn":
        torch.testing.assert_close(conv(x), bn(x), rtol=0, atol=1e-12)
    else:
        conv(x), bn(x)
    torch.testing.assert_close(conv[0].running_var, bn.running_var, rtol=0, atol=1e-12)


def test_settings_the_new_layer_cannot_take_warn_and_advise_only_its_keywords():
    # momentum=None (a cumulative average) into EvoNorm-B0, which takes a number
    src = nn.Sequential(_trained_bn_layer(momentum=None))
    (conv, rep), said = _warned(lambda: dnlib.convert_norms(src, "evonorm-b0", report=True))
    assert conv[0].momentum == 0.1 and len(said) == 1 and "0.momentum=None" in said[0]
    assert rep.rows[0].dropped[-1].startswith("momentum=None (a cumulative average: EvoNorm2dB0 takes a number")
    # eps=None (nn.RMSNorm's finfo) into frozen-bn, which takes a number; into rms it is carried
    (conv, rep), said = _warned(lambda: dnlib.convert_norms(nn.Sequential(nn.RMSNorm(8)), "frozen-bn",
                                                            types=nn.RMSNorm, report=True))
    assert conv[0].eps == 1e-5 and len(said) == 1 and "0.eps=None" in said[0] and "pass eps=" in said[0]
    assert dnlib.convert_norms(nn.Sequential(nn.RMSNorm(8)), "rms2d", types=nn.RMSNorm)[0].spec.eps is None
    # the caller's eps wins; the report names the layer's
    _, rep = dnlib.convert_norms(nn.Sequential(nn.BatchNorm2d(4, eps=1e-3)), "bn", eps=1e-4, report=True)
    assert "eps=0.0001 as asked (the source's 0.001 replaced)" in rep.rows[0].note
    # no report advises a keyword the preset refuses
    for to in dnlib.list_norms():
        if to in ("ws", "gn", "bcn", "evonorm-s0", "evonorm-s0a"):
            continue
        _, rep = _warned(lambda to=to: dnlib.convert_norms(
            nn.Sequential(_trained_bn_layer(eps=1e-3, momentum=None)), to, report=True))
        for k, v in (("eps", 0.1), ("momentum", 0.1), ("affine", True)):
            if f"pass {k}=" in str(rep):
                dnlib.make_norm(to, 8, **{k: v})


def test_instance_norm_with_running_stats_warns_that_evaluation_changes():
    inorm = nn.InstanceNorm2d(4, track_running_stats=True)
    inorm(torch.randn(8, 4, 6, 6) * 2 + 1)
    x = torch.randn(4, 4, 6, 6)
    ref = inorm.eval()(x)
    # before: evaluation output off by 1.18, the report alone saying the running statistics were dropped
    (conv, rep), said = _warned(lambda: dnlib.convert_norms(nn.Sequential(copy.deepcopy(inorm)).eval(), "in",
                                                            report=True))
    assert (conv(x) - ref).abs().max() > 0.1
    assert len(said) == 1 and "0.running_mean, running_var (InstanceNorm's" in said[0]
    with pytest.raises(ValueError, match="strict=True.*running_mean"):
        dnlib.convert_norms(nn.Sequential(copy.deepcopy(inorm)), "in", strict=True)
    _, said = _warned(lambda: dnlib.convert_norms(nn.Sequential(nn.InstanceNorm2d(4)), "in"))
    assert said == []   # no running statistics: nothing changes


def test_divisive_norm_to_divisive_norm_names_each_setting_it_drops():
    torch.manual_seed(0)
    bn_star = dnlib.make_norm("bn", 8, sigma=1.0, eps=0, alpha=0.01, learn_sigma=False)
    (conv, rep), said = _warned(lambda: dnlib.convert_norms(nn.Sequential(bn_star), "bn", types=DivisiveNorm,
                                                            report=True))
    # its eps 0 is no floor without its sigma: bn keeps the preset's eps (0 made the fused BN refuse training)
    assert conv[0].spec.eps == 1e-5 and conv[0].spec.sigma == 0.0 and conv[0].alpha == 0.0
    dead = torch.zeros(3, 8, 5, 5)
    assert torch.isfinite(conv.train()(dead)).all()
    assert rep.rows[0].dropped == ("sigma=1.0 (the new layer's is 0.0; pass sigma= to keep it)",
                                   "alpha=0.01 (the new layer's is 0.0; pass alpha= to keep it)")
    assert len(said) == 1 and "0.sigma=1.0" in said[0] and "alpha" not in said[0]   # alpha: the loss, not the output
    dn_star = dict(window=5, sigma=0.5, eps=0, alpha=0.005, border="reference")
    src = dnlib.make_norm("dn", 8, **dn_star).double()
    x = torch.randn(2, 8, 7, 7, dtype=torch.float64)
    ref = src(x)
    (conv, rep), said = _warned(lambda: dnlib.convert_norms(nn.Sequential(copy.deepcopy(src)), "dn",
                                                            types=DivisiveNorm, report=True))
    names = [d.split("=")[0] for d in rep.rows[0].dropped]
    assert names == ["sigma", "alpha", "border", "sum_window", "sup_window"], rep.rows[0].dropped
    assert len(said) == 1 and all(f"0.{n}=" in said[0] for n in ("sigma", "border", "sum_window", "sup_window"))
    # asked for: nothing dropped, nothing said, the same output
    (conv, rep), said = _warned(lambda: dnlib.convert_norms(nn.Sequential(copy.deepcopy(src)), "dn",
                                                            types=DivisiveNorm, report=True, **dn_star))
    assert said == [] and not rep.rows[0].dropped
    torch.testing.assert_close(conv(x), ref, rtol=0, atol=1e-12)
    # a preset without sigma (frozen-bn) takes the whole sigma^2 + eps as its eps: the same evaluation output
    src = dnlib.make_norm("bn", 8, sigma=1.0, eps=0).double()
    src(torch.randn(6, 8, 7, 7, dtype=torch.float64) * 2)
    (conv, rep), said = _warned(lambda: dnlib.convert_norms(nn.Sequential(copy.deepcopy(src)), "frozen-bn",
                                                            types=DivisiveNorm, report=True))
    assert said == [] and conv[0].eps == 1.0 and "sigma^2 + eps" in rep.rows[0].note
    torch.testing.assert_close(conv(x), src.eval()(x), rtol=0, atol=1e-12)
    # another kind (bn -> dn): the windows are the preset's; sigma is still named
    (_, rep), said = _warned(lambda: dnlib.convert_norms(nn.Sequential(dnlib.make_norm("bn-s", 8)), "dn",
                                                         types=DivisiveNorm, report=True))
    dropped = rep.rows[0].dropped
    assert any(d.startswith("sigma=1.0 (") for d in dropped) and not any("window" in d for d in dropped), dropped


def test_a_trained_parameter_that_is_not_copied_is_warned_of():
    """A learned sigma (or sn's mixture weights) is never copied: it was named only in the report (report=True), and
    the converted layer computed something else silently."""
    src = dnlib.make_norm("bn", 4, sigma=1.0, learn_sigma=True)
    with torch.no_grad():
        src.sigma.fill_(0.3)
    (conv, rep), said = _warned(lambda: dnlib.convert_norms(nn.Sequential(src), "bn", types=DivisiveNorm, report=True))
    assert len(said) == 1 and "computes something else" in said[0] and "0.sigma (the new layer has none)" in said[0]
    assert "sigma (the new layer has none)" in rep.rows[0].dropped
