"""Hardware cost model: predicted kernel time of layers on a target (``model.py``), from an analytic
roofline corrected by a calibration measured on the device (``calibrate.py``), in the kernel
families the OpenCL runtime really launches (``layers.py``)."""
from .calibrate import calibrate, default_profile_path, measure_ms, sample_module
from .graph import Prediction, predict_compiled
from .layers import Layer, conv_layer, linear_layer, module_layers
from .model import CostModel, Profile, analytic_ms, kernels_fingerprint

__all__ = ["CostModel", "Layer", "Prediction", "Profile", "predict_compiled", "analytic_ms", "calibrate", "conv_layer", "default_profile_path",
           "kernels_fingerprint", "linear_layer", "measure_ms", "module_layers", "sample_module"]
