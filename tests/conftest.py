import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def rel_err(ref: torch.Tensor, out: torch.Tensor) -> float:
    """max |out - ref| / max |ref|, the report's definition."""
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()
