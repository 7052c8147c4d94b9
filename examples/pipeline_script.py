"""A pass-pipeline script: trace once, run passes explicitly, inspect the report and the graph."""
import torch

import compiler
from compiler import zoo
from compiler.ops import FusedOp


def main() -> None:
    tv = zoo.import_torchvision()
    model = zoo.randomize(tv.models.mobilenet_v2(weights=None))
    x = torch.randn(1, 3, 96, 96)

    gm = compiler.trace(model, x)
    pm = compiler.PassManager(["cleanup", "fold_bn", {"name": "fuse", "residual": True}], dump_dir=None)
    gm, report = pm.run(gm, (x,))
    print(report)
    fused = [m for m in gm.modules() if isinstance(m, FusedOp)]
    print(f"\n{len(fused)} FusedOp nodes; activations: "
          f"{sorted({str(m.activation) for m in fused})}; with residual: {sum(m.residual for m in fused)}")


if __name__ == "__main__":
    main()
