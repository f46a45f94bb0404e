"""Export for deployment: the plain-op inference graph, ONNX files and their INT8 copies."""
from .graph import InferenceGraph
from .onnx_export import (ATTENTION_NAME, DESCRIPTOR_NAME, INPUT_NAME, ExportSpec, check_spec_matches,
                          export_onnx, read_onnx, weights_id)
from .quantize import calibration_batches, quantize_int8

__all__ = ['ATTENTION_NAME', 'DESCRIPTOR_NAME', 'INPUT_NAME', 'ExportSpec', 'InferenceGraph',
           'calibration_batches', 'check_spec_matches', 'export_onnx', 'quantize_int8',
           'read_onnx', 'weights_id']
