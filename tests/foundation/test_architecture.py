"""foundation.architecture: the architecture a backbone's weights imply, read from their shapes."""

from __future__ import annotations

from helpers.backbones import SMALL

from foundation.architecture import inferred_architecture
from foundation.unet import CardiacUNet


def test_the_architecture_is_read_from_the_tensor_shapes() -> None:
    for kwargs in ({"num_res_units": 0}, {"num_res_units": 3, "in_chans": 2, "features": 5}):
        net = CardiacUNet(**{**SMALL, **kwargs})
        args = {k: v for k, v in net.model_args.items() if k != "strides"}  # not in the shapes
        assert inferred_architecture(net.state_dict()) == args
