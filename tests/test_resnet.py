"""The CIFAR ResNet of He et al. 2016 (dnlib.models.resnet): size, shortcuts, and every normalizer trains."""
import pytest
import torch
import torch.nn.functional as F

import dnlib
from dnlib.models import CifarResNet, resnet20
from dnlib.models.resnet import BasicBlock
from dnlib.norms.norm import DivisiveNorm
from dnlib.norms.presets import PRESETS, get_norm_layer

pytestmark = pytest.mark.usefixtures("one_thread")   # small CPU steps: one thread beats two oversubscribed ones


def _count_by_hand(n=3, widths=(16, 32, 64), classes=10, shortcut="A", affine_per_site=2):
    """Parameters of He et al.'s CIFAR ResNet from its layer list: 3x3 convs without bias, a per-channel gamma and
    beta per normalizer site, option B's 1x1 projections (+ a norm) where the size changes, the FC layer."""
    conv = 3 * widths[0] * 9                                        # the first conv
    sites = [widths[0]]
    c_in = widths[0]
    for _i, c in enumerate(widths):
        for _b in range(n):
            conv += c_in * c * 9 + c * c * 9
            sites += [c, c]
            if shortcut == "B" and c_in != c:
                conv += c_in * c
                sites.append(c)
            c_in = c
    return conv + affine_per_site * sum(sites) + widths[2] * classes + classes


def test_resnet20_size_is_the_papers_0_27m():
    net = resnet20(10, "bn")
    n = sum(p.numel() for p in net.parameters())
    assert n == _count_by_hand() == 269722
    assert round(n / 1e6, 2) == 0.27                                 # He et al. 2016, Table 6: ResNet-20, 0.27M
    assert sum(p.numel() for p in resnet20(10, "bn", shortcut="B").parameters()) == _count_by_hand(shortcut="B")
    # 6n + 2 weighted layers: 19 convs and one FC (what the recipe's weight decay applies to)
    weights, others = net.decay_parameters()
    assert len(weights) == 20 and [w.dim() for w in weights].count(4) == 19
    assert len(net.norm_sites()) == 19
    # larger n and CIFAR-100
    assert sum(p.numel() for p in CifarResNet(100, "bn", blocks=5).parameters()) == _count_by_hand(5, classes=100)
    # a preset without affine (DN) has no gamma/beta
    assert sum(p.numel() for p in resnet20(10, "dn-s").parameters()) == _count_by_hand(affine_per_site=0)


def test_forward_shapes_and_features():
    net = resnet20(10, "bn").eval()
    x = torch.randn(3, 3, 32, 32)
    assert net(x).shape == (3, 10)
    assert net.features(x, 1, pre_norm=True).shape == (3, 16, 32, 32)
    assert [net.features(x, k).shape[1:] for k in (2, 3, 4)] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    torch.testing.assert_close(net(x), net.fc(net.features(x).mean((2, 3))))


@pytest.mark.parametrize("stride,c_in,c_out", [(1, 16, 16), (2, 16, 32)])
def test_option_a_shortcut_is_the_subsampled_zero_padded_identity(stride, c_in, c_out):
    block = BasicBlock(c_in, c_out, stride, get_norm_layer("bn"), "A").eval()
    torch.nn.init.zeros_(block.conv2.weight)                          # the residual branch is then exactly 0
    x = torch.randn(2, c_in, 8, 8)
    want = x[:, :, ::stride, ::stride]
    want = torch.cat([want, torch.zeros(2, c_out - c_in, *want.shape[2:])], 1)
    torch.testing.assert_close(block(x), F.relu(want))
    assert sum(p.numel() for n, p in block.named_parameters() if "shortcut" in n) == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"shortcut: must be one of \['A', 'B'\], got 'C'"):
        resnet20(shortcut="C")
    with pytest.raises(ValueError, match=r"norm: unknown normalizer 'batchnorm'"):
        resnet20(10, "batchnorm")
    with pytest.raises(ValueError, match=r"blocks: must be an integer >= 1"):
        CifarResNet(blocks=0)
    with pytest.raises(ValueError, match=r"num_features: 16 is not divisible by groups=32"):
        resnet20(10, "gn")                                            # gn's default 32 groups: pass groups=
    with pytest.raises(ValueError, match=r"upto: must be 1"):
        resnet20().features(torch.randn(1, 3, 32, 32), 5)


NORMS = [pytest.param("bn", {}, id="bn"), pytest.param("gn", {"groups": 8}, id="gn"), pytest.param("ln", {}, id="ln"),
         pytest.param("dn-s", {}, id="dn-s"),
         pytest.param("dn", {"sigma": 0.5, "eps": 0.0, "alpha": 0.005}, id="dn-star"),   # the CIFAR configs' DN*
         pytest.param("gdn", {}, id="gdn", marks=pytest.mark.skipif(
             "gdn" not in PRESETS, reason="the gdn preset (issue 17 item 2, engineer G) has not landed")),
         pytest.param("brn", {}, id="brn"), pytest.param("frn", {}, id="frn"),
         pytest.param("evonorm-b0", {}, id="evonorm-b0")]


@pytest.mark.parametrize("norm,kw", NORMS)
def test_every_norm_trains_a_few_steps(norm, kw):
    torch.manual_seed(0)
    net = resnet20(10, norm, norm_kwargs=kw)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        total = loss + dnlib.sparse_penalty(net)
        total.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0], losses                             # it fits the tiny batch
    if kw.get("alpha"):
        assert len(net.sparse_sites()) == 19
    assert all(isinstance(m, DivisiveNorm) for _, m in net.norm_sites())


def test_cifar_configs_rows_and_schedule():
    from dnlib.experiments.cifar_configs import ARCHS, TABLE7, get_config, list_configs
    assert list_configs() == list(TABLE7)                            # the default is still Table 7
    names = list_configs("resnet20")
    assert names == ["resnet20-bn", "resnet20-gn", "resnet20-ln", "resnet20-dn-star", "resnet20-gdn", "resnet20-brn",
                     "resnet20-frn", "resnet20-evonorm-b0"]   # (the last three: issue 26, notebook 07's small batch)
    assert list_configs("all") == list_configs() + names
    for name in names:
        c = get_config(name)
        assert (c.arch, c.lr, c.momentum, c.weight_decay, c.batch_size, c.milestones, c.steps, c.gamma) == \
            ("resnet20", 0.1, 0.9, 1e-4, 128, (32000, 48000), 64000, 0.1)   # He et al. 2016 §4.2
        assert c.paper_accuracy is None                              # not a row of Ren et al.'s tables
    assert get_config("resnet20-dn-star").norm_kwargs() == {"sigma": 0.5, "eps": 0.0, "alpha": 0.005}
    assert get_config("resnet20-gn").norm_kwargs() == {"groups": 8}
    assert get_config("resnet20-bn").scaled(20).milestones == (10, 15)
    assert get_config("dn-star").arch == "cnn" and ARCHS == ("cnn", "resnet20")
    net = get_config("resnet20-gn", "cifar100").build_model()
    assert isinstance(net, CifarResNet) and net.fc.out_features == 100 and net.norm1.spec.groups == 8
    with pytest.raises(ValueError, match=r"arch: must be one of \['cnn', 'resnet20'\], got 'vgg'"):
        get_config("bn", arch="vgg")
    with pytest.raises(ValueError, match=r"arch: must be one of"):
        list_configs("resnet")
    with pytest.raises(ValueError, match=r"dropout: the ResNet-20 has none"):
        get_config("resnet20-bn", dropout=0.5).build_model()


@pytest.mark.slow
def test_recipe_runs_a_resnet_row(tmp_path):
    import dnlib.experiments.cifar
    r = dnlib.experiments.cifar.run("resnet20-bn", steps=3, subset=(100, 50), batch_size=16, eval_every=0, out=tmp_path,
                        device="cpu")
    assert isinstance(r.model, CifarResNet)
    assert r.record["config"]["arch"] == "resnet20" and r.record["steps_done"] == 3
    assert 0.0 <= r.headline["final_acc"] <= 1.0
