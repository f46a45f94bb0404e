"""ONNX operators that the TensorRT ONNX parser supports, for checking exported graphs without TensorRT.

Source: onnx-tensorrt, branch ``release/10.x``, ``docs/operators.md`` ("Supported ONNX Operators",
TensorRT 10.x; the parser there handles ONNX opsets 9 and newer, up to the opset of the ONNX release
it is built against). Written down from that table: every operator marked supported ("Y") is listed,
with the restrictions the table notes where they could matter for BoQ graphs. Operators the table
marks unsupported ("N"), e.g. ConvInteger, MatMulInteger, QLinearConv, QLinearMatMul,
DynamicQuantizeLinear, the Sequence* and Optional* operators, StringNormalizer, TfIdfVectorizer,
Unique, Col2Im, STFT, DFT, Det and the loss operators, are not in the set: a graph using them would
not parse. On a machine with TensorRT, ``test/test_gpu.py`` parses the exported graphs with the real
parser, which is the final word.
"""
from __future__ import annotations

TENSORRT_ONNX_PARSER_VERSION = 'onnx-tensorrt release/10.x docs/operators.md (TensorRT 10.x)'

# operator -> restriction noted in operators.md ('' if none relevant)
SUPPORTED_OPS: dict[str, str] = {
    'Abs': '', 'Acos': '', 'Acosh': '', 'Add': '', 'AffineGrid': '', 'And': '', 'ArgMax': '', 'ArgMin': '',
    'Asin': '', 'Asinh': '', 'Atan': '', 'Atanh': '',
    'AveragePool': '2D or 3D pooling only',
    'BatchNormalization': 'scale, bias, mean and var must be initializers',
    'BlackmanWindow': '', 'Cast': 'no casts to or from FP8/INT4/strings', 'CastLike': '', 'Ceil': '', 'Celu': '',
    'Clip': 'min and max must be initializers (or absent)', 'Concat': '', 'Constant': '',
    'ConstantOfShape': '', 'Conv': '2D or 3D; weights should be initializers (or dequantized initializers)',
    'ConvTranspose': '2D or 3D', 'Cos': '', 'Cosh': '', 'CumSum': 'axis must be an initializer',
    'DeformConv': '', 'DepthToSpace': '', 'DequantizeLinear': 'scale and zero point must be initializers',
    'Dropout': 'inference: identity', 'Div': '', 'Einsum': '', 'Elu': '', 'Equal': '', 'Erf': '', 'Exp': '',
    'Expand': '', 'EyeLike': '', 'Flatten': '', 'Floor': '', 'Gather': '', 'GatherElements': '',
    'GatherND': '', 'Gelu': '', 'Gemm': '', 'GlobalAveragePool': '', 'GlobalLpPool': '', 'GlobalMaxPool': '',
    'Greater': '', 'GreaterOrEqual': '', 'GridSample': '', 'GroupNormalization': '', 'GRU': '',
    'HammingWindow': '', 'HannWindow': '', 'HardSigmoid': '', 'HardSwish': '', 'Hardmax': '', 'Identity': '',
    'If': 'output shapes of both branches must match', 'ImageScaler': '', 'InstanceNormalization': '',
    'IsInf': '', 'IsNaN': '', 'LayerNormalization': '', 'LeakyRelu': '', 'Less': '', 'LessOrEqual': '',
    'Log': '', 'LogSoftmax': '', 'Loop': '', 'LpNormalization': '', 'LpPool': '', 'LRN': '', 'LSTM': '',
    'MatMul': '', 'Max': '', 'MaxPool': '2D or 3D pooling only', 'Mean': '', 'MeanVarianceNormalization': '',
    'Min': '', 'Mish': '', 'Mod': '', 'Mul': '', 'Neg': '', 'NonMaxSuppression': '', 'NonZero': '', 'Not': '',
    'OneHot': '', 'Or': '', 'Pad': '', 'ParametricSoftplus': '', 'Pow': '', 'PRelu': '',
    'QuantizeLinear': 'scale and zero point must be initializers', 'RandomNormal': '',
    'RandomNormalLike': '', 'RandomUniform': '', 'RandomUniformLike': '', 'Range': '', 'Reciprocal': '',
    'ReduceL1': '', 'ReduceL2': '', 'ReduceLogSum': '', 'ReduceLogSumExp': '', 'ReduceMax': '',
    'ReduceMean': '', 'ReduceMin': '', 'ReduceProd': '', 'ReduceSum': '', 'ReduceSumSquare': '', 'Relu': '',
    'Reshape': '', 'Resize': 'antialias not supported; cubic, linear and nearest modes', 'ReverseSequence': '',
    'RNN': '', 'RoiAlign': '', 'Round': '', 'Scan': '', 'Scatter': '', 'ScatterElements': '', 'ScatterND': '',
    'ScaledTanh': '', 'Selu': '', 'Shape': '', 'Shrink': '', 'Sigmoid': '', 'Sign': '', 'Sin': '', 'Sinh': '',
    'Size': '', 'Slice': '', 'Softmax': '', 'Softplus': '', 'Softsign': '', 'SpaceToDepth': '', 'Split': '',
    'Sqrt': '', 'Squeeze': '', 'Sub': '', 'Sum': '', 'Tan': '', 'Tanh': '', 'ThresholdedRelu': '', 'Tile': '',
    'TopK': 'K must be an initializer', 'Transpose': '', 'Trilu': '', 'Unsqueeze': '', 'Upsample': '',
    'Where': '', 'Xor': '',
}

# ONNX tensor element types TensorRT 10 handles (FLOAT, UINT8, INT8, INT32, INT64, BOOL, FLOAT16,
# BFLOAT16, and FP8/INT4 for quantization); DOUBLE is not among them.
UNSUPPORTED_ELEMENT_TYPES = {'DOUBLE', 'STRING', 'COMPLEX64', 'COMPLEX128', 'UINT16', 'UINT32', 'UINT64', 'INT16'}


def unsupported_ops(op_types: set[str] | list[str]) -> list[str]:
    """Operators of a graph that are not in the TensorRT parser's supported list."""
    return sorted(set(op_types) - set(SUPPORTED_OPS))


def graph_report(proto) -> dict:
    """Operators and tensor element types of an ONNX model, and which TensorRT would not take."""
    import onnx
    ops = {n.op_type for n in proto.graph.node if n.domain in ('', 'ai.onnx')}
    custom = sorted({f'{n.domain}::{n.op_type}' for n in proto.graph.node if n.domain not in ('', 'ai.onnx')})
    types = set()
    for t in proto.graph.initializer:
        types.add(onnx.TensorProto.DataType.Name(t.data_type))
    for v in list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info):
        if v.type.HasField('tensor_type'):
            types.add(onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type))
    return {'ops': sorted(ops), 'unsupported_ops': unsupported_ops(ops) + custom,
            'element_types': sorted(types), 'unsupported_types': sorted(types & UNSUPPORTED_ELEMENT_TYPES)}
