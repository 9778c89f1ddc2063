"""convert_to_deformable: choice of layers, same function after conversion, gradients flow."""

import pytest
import torch
from torch import nn

from deformconv import DeformConv2dPack, ModulatedDeformConv2dPack
from deformconv.convert import convert_to_deformable


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.down = nn.Conv2d(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else None

    def forward(self, x):
        y = self.conv2(torch.relu(self.bn1(self.conv1(x))))
        return torch.relu(y + (self.down(x) if self.down is not None else x))


class TinyResNet(nn.Module):
    """Stem, three residual stages with 1x1 shortcuts, a head: 8 convs larger than 1x1."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = Block(8, 8, 1)
        self.layer2 = Block(8, 12, 2)
        self.layer3 = nn.Sequential(Block(12, 16, 2))
        self.dilated = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=2)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(torch.relu(self.stem(x)))))
        return self.head(self.dilated(x).mean((2, 3)))


def _net(dtype=torch.float32):
    torch.manual_seed(0)
    net = TinyResNet().to(dtype)
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        net.layer2.bn1.running_mean.uniform_(-0.5, 0.5)
        net.layer2.bn1.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("version", [1, 2, "v1", "v2"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_output_unchanged_and_default_choice(version, dtype, tol):
    net = _net(dtype)
    x = torch.randn(2, 3, 12, 11, dtype=dtype)
    before = net(x)
    net2, done = convert_to_deformable(net, version=version, include_grouped=True)
    assert net2 is net
    assert done == ["layer3.0.conv1", "layer3.0.conv2", "dilated"]
    cls = ModulatedDeformConv2dPack if version in (2, "v2") else DeformConv2dPack
    assert type(net.dilated) is cls and type(net.layer3[0].conv2) is cls
    assert type(net.layer2.conv2) is nn.Conv2d and type(net.layer3[0].down) is nn.Conv2d
    assert net.dilated.dilation == (2, 2) and net.dilated.groups == 2
    assert net.layer3[0].conv1.stride == (2, 2) and net.layer3[0].conv1.bias is None
    assert not net.dilated.training and net.dilated.weight.dtype == dtype
    after = net(x)
    scale = before.abs().max()
    assert scale > 0
    assert ((after - before).abs().max() / scale).item() <= tol


def test_v2_without_compensation_starts_at_half():
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    new, _ = convert_to_deformable(conv, version=2, preserve_output=False, inplace=False)
    want = 0.5 * nn.functional.conv2d(x, conv.weight, None, padding=1) + conv.bias[:, None, None]
    torch.testing.assert_close(new(x), want)
    assert torch.equal(new.weight, conv.weight)


def test_gradients_reach_offset_predictors():
    net = _net().train()
    convert_to_deformable(net, version=2, include_grouped=True)
    x = torch.randn(2, 3, 12, 11)
    net(x).square().sum().backward()
    for layer in (net.layer3[0].conv1, net.layer3[0].conv2, net.dilated):
        g = layer.conv_offset.weight.grad
        assert g is not None and g.abs().sum() > 0
        assert layer.conv_offset.bias.grad.abs().sum() > 0
    # After one step the layers really deform and the output changes.
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = net.eval()(x).detach()
    opt.step()
    assert not torch.allclose(net(x), before)


def test_names_filter_num_last_and_copy():
    net = _net()
    new, done = convert_to_deformable(net, version=1, names=["stem", "layer1.conv2"],
                                      inplace=False)
    assert done == ["stem", "layer1.conv2"] and type(new.stem) is DeformConv2dPack
    assert type(net.stem) is nn.Conv2d  # the original is untouched
    _, done = convert_to_deformable(_net(), filter=lambda n, m: m.stride == (1, 1),
                                    num_last=None, include_grouped=True)
    assert done == ["stem", "layer1.conv1", "layer1.conv2", "layer2.conv2", "layer3.0.conv2",
                    "dilated"]
    net = _net()
    _, done = convert_to_deformable(net, num_last=1, offset_groups=4, include_grouped=True)
    assert done == ["dilated"] and net.dilated.offset_groups == 4
    # Converting again finds the remaining plain ones, never the offset predictors.
    _, again = convert_to_deformable(net, num_last=2)
    assert again == ["layer3.0.conv1", "layer3.0.conv2"]


def test_bad_arguments():
    net = _net()
    with pytest.raises(ValueError, match="version"):
        convert_to_deformable(net, version=3)
    with pytest.raises(ValueError, match="1x1"):
        convert_to_deformable(net, names=["layer2.down"])
    with pytest.raises(ValueError, match="no module named 'nope'"):
        convert_to_deformable(net, names=["nope"])
    with pytest.raises(ValueError, match="offset_groups"):
        convert_to_deformable(net, offset_groups=5)
    with pytest.raises(ValueError, match="names or filter"):
        convert_to_deformable(net, names=["stem"], filter=lambda n, m: True)
    with pytest.raises(ValueError, match="padding_mode"):
        convert_to_deformable(nn.Conv2d(1, 1, 3, padding_mode="reflect"), names=[""])
    with pytest.raises(TypeError, match="nn.Module"):
        convert_to_deformable("net")
    # Every call above failed before changing anything: the modules are those of a fresh net.
    assert [(n, type(m)) for n, m in net.named_modules()] == [
        (n, type(m)) for n, m in _net().named_modules()]


def _shared_net():
    torch.manual_seed(0)
    c = nn.Conv2d(8, 8, 3, padding=1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), c, nn.ReLU(), c), c


@pytest.mark.parametrize("version", [1, 2])
def test_a_shared_convolution_stays_one_module(version):
    """A convolution used twice becomes one converted module at both places, counted once;
    one training step keeps the uses tied (same parameters, the same update)."""
    net, c = _shared_net()
    x = torch.randn(2, 3, 9, 7)
    before = net(x).detach()
    net, done = convert_to_deformable(net, version=version)
    assert done == ["0", "1"]
    assert net[1] is net[3] and type(net[1]) is not nn.Conv2d
    torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)
    params = list(net.parameters())
    assert len(params) == len({id(p) for p in params})  # no parameter twice
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    net.train()
    net(x).square().mean().backward()
    opt.step()
    assert net[1] is net[3] and net[1].conv_offset.weight.abs().sum() > 0  # it deforms now
    assert torch.equal(net.state_dict()["1.weight"], net.state_dict()["3.weight"])
    assert torch.equal(net.state_dict()["1.conv_offset.weight"],
                       net.state_dict()["3.conv_offset.weight"])
    # Named by either of its names, it is converted once, everywhere.
    for name in ("1", "3"):
        net, c = _shared_net()
        net, done = convert_to_deformable(net, names=[name, "1", "3"])
        assert done == [name] and net[1] is net[3] and type(net[3]) is ModulatedDeformConv2dPack
    # A copy keeps the sharing too.
    net, _ = _shared_net()
    new, _ = convert_to_deformable(net, inplace=False)
    assert new[1] is new[3] and type(net[3]) is nn.Conv2d


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (4, 1), (3, 2), ((2, 5), (3, 1))])
@pytest.mark.parametrize("version", [1, 2])
def test_padding_same_and_valid_are_converted(kernel, dilation, version):
    """padding='same' (also asymmetric: even kernels) and 'valid' convert, same output."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, kernel, padding="same", dilation=dilation),
                        nn.Conv2d(4, 5, 3, padding="valid")).double()
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    before = net(x)
    net, done = convert_to_deformable(net, version=version)
    assert done == ["0", "1"]
    torch.testing.assert_close(net(x), before, rtol=1e-12, atol=1e-12)
    assert "padding='same'" in repr(net[0]) or "padding=(" in repr(net[0])


def test_a_frozen_convolution_gets_a_frozen_offset_predictor():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1),
                        nn.Conv2d(4, 4, 3, padding=1, bias=False))
    net[0].requires_grad_(False)
    net[1].weight.requires_grad_(False)      # partly frozen: the bias still trains
    net[2].requires_grad_(False)
    net, done = convert_to_deformable(net, version=2)
    assert done == ["0", "1", "2"]
    for i, frozen in ((0, True), (1, False), (2, True)):
        assert all(p.requires_grad is not frozen for p in net[i].conv_offset.parameters()), i
    assert not net[0].weight.requires_grad and net[1].bias.requires_grad


def _detector():
    """The module tree of torchvision's fasterrcnn_resnet50_fpn where the converter looks
    (names as there, channels tiny): ResNet stages with 1x1-3x3-1x1 bottlenecks, the FPN's
    3x3 output blocks and the RPN head's 3x3 convolution, in that module order."""
    def bottleneck(c):
        return nn.ModuleDict(dict(conv1=nn.Conv2d(c, c, 1), conv2=nn.Conv2d(c, c, 3, padding=1),
                                  conv3=nn.Conv2d(c, c, 1)))
    body = nn.ModuleDict({f"layer{k}": nn.Sequential(*[bottleneck(4) for _ in range(n)])
                          for k, n in ((1, 3), (2, 4), (3, 6), (4, 3))})
    fpn = nn.ModuleDict(dict(
        inner_blocks=nn.ModuleList([nn.Sequential(nn.Conv2d(4, 4, 1)) for _ in range(4)]),
        layer_blocks=nn.ModuleList([nn.Sequential(nn.Conv2d(4, 4, 3, padding=1))
                                    for _ in range(4)])))
    rpn = nn.ModuleDict(dict(head=nn.ModuleDict(dict(
        conv=nn.Sequential(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())),
        cls_logits=nn.Conv2d(4, 3, 1), bbox_pred=nn.Conv2d(4, 12, 1)))))
    return nn.ModuleDict(dict(backbone=nn.ModuleDict(dict(body=body, fpn=fpn)), rpn=rpn))


def test_choosing_the_backbone_stage_of_a_detector():
    """The README's Faster R-CNN example: the default takes the FPN's last blocks and the RPN
    head; filter= or names= take layer4's 3x3 convolutions, as DCN detectors do."""
    _, done = convert_to_deformable(_detector())
    assert done == ["backbone.fpn.layer_blocks.2.0", "backbone.fpn.layer_blocks.3.0",
                    "rpn.head.conv.0.0"]
    layer4 = ["backbone.body.layer4.0.conv2", "backbone.body.layer4.1.conv2",
              "backbone.body.layer4.2.conv2"]
    model, done = convert_to_deformable(
        _detector(), filter=lambda name, conv: name.startswith("backbone.body.layer4."),
        num_last=None)
    assert done == layer4
    assert type(model.get_submodule(layer4[0])) is ModulatedDeformConv2dPack
    _, done = convert_to_deformable(_detector(), names=layer4)
    assert done == layer4
