"""Quantization-aware training: int8 arithmetic (`maths`) and fake-quantised Linears for training (`qat`)."""
