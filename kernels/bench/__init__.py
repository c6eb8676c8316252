"""Kernel benchmarks, each against the reference (and numpy) measured in the same run; run from the repo root:

python -m kernels.bench.linear     float32 linear: cpu kernel vs ref vs numpy
python -m kernels.bench.quant      quantized_linear per format vs the float32 kernel
python -m kernels.bench.attention  flash attention vs the plain-mx attention
"""
