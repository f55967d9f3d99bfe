"""The stages, in the order they run: train, align (preference tuning, when configured), merge, export (GGUF,
ONNX), verify, evaluate. A stage imports only earlier stages."""
