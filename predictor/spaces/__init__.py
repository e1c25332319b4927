"""Search spaces whose measured latencies train the predictor: NAS-Bench-201 and FBNet.

Each space module offers the same four entry points:

* ``parse_arch(spec)`` -> the normalised architecture (raises `InvalidArchError`);
* ``arch_to_str(...)`` -> its canonical string;
* a torch ``nn.Module`` (`nb201.NB201Network`, `fbnet.FBNetNetwork`) that rebuilds
  the reference network of the benchmark;
* ``build_onnx(arch, input_shape=..., num_classes=...)`` -> the ``onnx.ModelProto``
  that ``torch.onnx.export(net.eval(), (x,), f, dynamo=False)`` would give, written
  directly (milliseconds instead of ~0.5 s), with zero weights.

`custom` holds the spaces users register (`register_space`: a builder per arch string),
predicted, calibrated and searched by arch like these two, through the general ONNX path.
"""

from __future__ import annotations

from predictor.spaces import fbnet, nb201

__all__ = ["fbnet", "nb201"]
