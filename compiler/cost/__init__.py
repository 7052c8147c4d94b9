"""Hardware cost model: predicted kernel time of layers on a target (``model.py``), from an analytic
roofline corrected by a calibration measured on the device (``calibrate.py``), in the kernel
families the OpenCL runtime really launches (``layers.py``)."""
from .calibrate import (PASSES, calibrate, default_profile_path, kernel_ms_pass, measure_ms, prepare_layer, sample_module,
                        wall_ms, wall_ms_each)
from .graph import compiled_work, graph_work, predict_compiled, predict_graph
from .layers import Layer, conv_layer, linear_layer, module_layers
from .model import CostModel, Prediction, Profile, Work, analytic_ms, kernels_fingerprint

__all__ = ["CostModel", "Layer", "Prediction", "Profile", "Work", "compiled_work", "graph_work", "predict_compiled", "predict_graph", "analytic_ms", "calibrate", "conv_layer", "default_profile_path",
           "PASSES", "kernel_ms_pass", "kernels_fingerprint", "linear_layer", "measure_ms", "prepare_layer", "module_layers", "sample_module", "wall_ms", "wall_ms_each"]
