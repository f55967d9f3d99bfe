"""The stages, in the order they run: train, merge, export (GGUF, ONNX), verify, evaluate. A stage imports only earlier stages."""
