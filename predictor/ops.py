"""The op vocabulary of the feature schema: ONNX op types the predictor knows by name.

Kept free of heavy imports so that graph extraction (`latpred inspect`) stays fast.
"""

from __future__ import annotations

# A fixed vocabulary of ONNX op types seen in CNNs and transformers; anything else is
# "other" (kept as a node, counted in `OpGraph.unknown_ops`).
OP_VOCABULARY: tuple[str, ...] = (
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum",
    "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
    "Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Gelu", "Erf", "Elu", "Selu", "Softplus", "Mish", "Softmax", "LogSoftmax",
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Exp", "Log", "Neg", "Abs",
    "Max", "Min", "Where", "Equal", "Less", "Greater", "Not", "And",
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ArgMax", "TopK",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "Concat", "Split", "Slice", "Gather", "GatherElements", "ScatterND", "Reshape", "Flatten",
    "Transpose", "Squeeze", "Unsqueeze", "Expand", "Tile", "Pad", "Resize", "Upsample",
    "DepthToSpace", "SpaceToDepth", "Cast", "CumSum", "Range", "ConstantOfShape",
    "LSTM", "GRU", "RNN",
)
OTHER = "other"
ACTIVATIONS: tuple[str, ...] = (
    "Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Gelu", "Elu", "Selu", "Softplus", "Mish",
)
