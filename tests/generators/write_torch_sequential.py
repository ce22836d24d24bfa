"""Write tests/fixtures/torch_sequential/: a PyTorch state dict and the forward pass it gives.

Run by hand with torch installed (the test suite reads the committed files and never needs
torch): ``python tests/generators/write_torch_sequential.py tests/fixtures/torch_sequential``.

The model is ``Sequential(Conv2d(3, 4, 3), BatchNorm2d(4), ReLU(), Flatten(), Linear(144, 16),
ReLU(), Linear(16, 5))`` with random weights and BatchNorm statistics, in eval mode. Files:

    state_dict.safetensors   model.state_dict() written by safetensors.torch.save_file
    state_dict.pt            the same state dict written by torch.save (zip format)
    io.safetensors           "input" [2, 3, 8, 8] float32 and "output" [2, 5] float32: what the
                             model computes on that input (torch, eval mode)

tests/test_suggest.py builds the Keras twin (channels_first, so that Flatten orders the features
as PyTorch does), loads these weights through the spec ``suggest`` proposes, and compares the
forward pass with ``output``.
"""

from __future__ import annotations

import sys
from pathlib import Path

SEED = 1901


def main(outdir: str) -> None:
    import torch
    from safetensors.torch import save_file

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 5),
    )
    with torch.no_grad():
        bn = model[1]
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.num_batches_tracked.fill_(7)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        y = model(x)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "state_dict.safetensors"))
    torch.save(model.state_dict(), out / "state_dict.pt")
    save_file({"input": x.contiguous(), "output": y.contiguous()}, str(out / "io.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
